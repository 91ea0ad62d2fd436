"""ELMo vectors as a column of a ``datasets.Dataset`` (``Dataset.map(..., batched=True)``).

    from elmo import Embedder
    from elmo.hf_datasets import add_elmo_vectors, elmo_map_function

    embedder = Embedder.from_pretrained("runs/lm", device="cuda")      # or "cpu"
    ds = add_elmo_vectors(ds, embedder, tokens_column="tokens", output="average")
    ds.with_format("numpy")[0]["elmo"]          # (n_tokens, 2P) float32

    # or call map yourself (the same function, any map options):
    ds = ds.map(elmo_map_function(embedder, output="top"), batched=True, batch_size=256)

``output``: "top", "average", a list of L+1 layer weights (a fixed scalar mix, as
``Embedder``), a ``ScalarMix``, each (n_tokens, 2P) per example; or "all": every layer, stored
token-major as (n_tokens, L+1, 2P) (Arrow's fixed-shape arrays allow only the first dimension to
vary, so the sentence length comes first; ``np.moveaxis(x, 1, 0)`` gives ``Embedder``'s
(L+1, n, 2P)).

Memory stays bounded: ``map`` embeds ``batch_size`` examples at a time and writes every
``writer_batch_size`` rows to its Arrow cache file on disk, and the result is memory-mapped from
that file. The embedding runs on the embedder's device (CPU or GPU); the vectors come back as
float32 numpy arrays. ``datasets`` is a core dependency but is imported only by
``add_elmo_vectors``, so ``import elmo`` stays light. Use ``num_proc=1`` (the default): the
model is not copied into worker processes.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np

from elmo.featurizer import Embedder, Output
from elmo.scalar_mix import ScalarMix


def elmo_map_function(embedder: Embedder, tokens_column: str = "tokens", output: Output = "average",
                      column: str = "elmo") -> Callable[[dict], dict]:
    """A function for ``Dataset.map(fn, batched=True)``: a batch (dict of columns) -> {column: vectors}.

    ``tokens_column`` holds each example's tokens (a list of strings).
    """
    def embed(batch: dict) -> dict:
        if tokens_column not in batch:
            raise KeyError(f"the dataset has no column {tokens_column!r} (columns: "
                           f"{', '.join(batch)}); pass tokens_column= the column of token lists")
        sentences = [list(tokens) for tokens in batch[tokens_column]]
        vectors = list(embedder.embed_sentences(sentences, output=output, batch_size=embedder.batch_size))
        if isinstance(output, str) and output == "all":
            vectors = [np.ascontiguousarray(np.moveaxis(v, 0, 1)) for v in vectors]  # (n, L+1, 2P)
        return {column: [np.asarray(v, dtype=np.float32) for v in vectors]}

    return embed


def elmo_features(embedder: Embedder, output: Output = "average"):
    """The ``datasets`` feature type of the vectors column: Array2D (None, 2P), or Array3D
    (None, L+1, 2P) for "all"."""
    import datasets

    D = embedder.output_dim
    if isinstance(output, str) and output == "all":
        return datasets.Array3D(shape=(None, embedder.num_layers, D), dtype="float32")
    return datasets.Array2D(shape=(None, D), dtype="float32")


def add_elmo_vectors(dataset, embedder: Embedder, tokens_column: str = "tokens",
                     output: Output = "average", column: str = "elmo", batch_size: int = 256,
                     writer_batch_size: Optional[int] = None, cache_file_name: Optional[str] = None,
                     **map_kwargs):
    """``dataset`` with a new column ``column`` of ELMo vectors (see the module docstring).

    ``batch_size`` examples are embedded per call (the embedder batches them by length);
    ``writer_batch_size`` rows (default: ``batch_size``) are buffered before each write to the
    Arrow cache. Other keyword arguments go to ``Dataset.map`` (e.g. ``load_from_cache_file``).
    The same data, weights and settings map to the same cache entry: a second run reads the
    vectors back instead of embedding again.
    """
    try:
        import datasets
    except ImportError:  # a core dependency; only a broken install gets here
        raise ImportError("add_elmo_vectors needs the datasets package: pip install datasets") from None
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"add_elmo_vectors takes a datasets.Dataset, got {type(dataset).__name__} "
                        "(for an IterableDataset call .map(elmo_map_function(...), batched=True))")
    if tokens_column not in dataset.column_names:
        raise KeyError(f"the dataset has no column {tokens_column!r} (columns: "
                       f"{', '.join(dataset.column_names)}); pass tokens_column=")
    if column in dataset.column_names:
        raise ValueError(f"the dataset already has a column {column!r}; pass another column= "
                         "or remove it first (dataset.remove_columns)")
    features = dataset.features.copy()
    features[column] = elmo_features(embedder, output)
    map_kwargs.setdefault("new_fingerprint", _fingerprint(dataset, embedder, tokens_column, output, column))
    return dataset.map(elmo_map_function(embedder, tokens_column, output, column), batched=True,
                       batch_size=batch_size, writer_batch_size=writer_batch_size or batch_size,
                       features=features, cache_file_name=cache_file_name, **map_kwargs)


def _fingerprint(dataset, embedder: Embedder, tokens_column: str, output: Output, column: str) -> str:
    """The result's cache key: the input's fingerprint, the model's weights (elmo.dump's
    model_fingerprint) and the settings; not the embedder object, whose prepared inference
    weights change after its first batch (so datasets' own hash of the function would differ
    between two embedders of the same model, and each run would embed everything again)."""
    import hashlib
    import json

    from elmo.dump import model_fingerprint

    if isinstance(output, str):
        how = output
    elif isinstance(output, ScalarMix):
        how = json.dumps({k: v.detach().cpu().reshape(-1).tolist() for k, v in output.state_dict().items()},
                         sort_keys=True)
    else:
        how = json.dumps([float(w) for w in output])
    key = "|".join(["elmo.hf_datasets/1", dataset._fingerprint, model_fingerprint(embedder.model),
                    str(embedder.dtype), tokens_column, column, how])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def as_layers(vectors: Union[np.ndarray, list]) -> np.ndarray:
    """An "all" example from the dataset (n, L+1, 2P) -> ``Embedder``'s layout (L+1, n, 2P)."""
    return np.moveaxis(np.asarray(vectors, dtype=np.float32), 1, 0)
