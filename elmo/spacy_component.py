"""The spaCy pipeline component "elmo" (extra ``[spacy]``): ELMo vectors on spaCy's tokens.

    import spacy
    nlp = spacy.blank("en")
    nlp.add_pipe("elmo", config={"model": "runs/lm"})    # any from_pretrained source (elmo.hub)
    doc = nlp("The cat sat on the mat.")
    doc.tensor            # (n_tokens, 2P) float32: the chosen output ("average" by default)
    doc[1].vector         # that token's row (spaCy reads doc.tensor when the vocab has no vectors)
    doc._.elmo_layers     # (L+1, n_tokens, 2P): every layer
    for doc in nlp.pipe(texts, batch_size=64): ...        # batched through the embedder

The factory is registered through the ``spacy_factories`` entry point (pyproject.toml), so
``add_pipe("elmo")`` works without importing this module. Config: ``model`` (a folder, URL, hub
id or release name) or ``options_file`` + ``weight_file``; ``revision`` (hub ids); ``output``
("average", "top", or a JSON list of L+1 layer weights); ``layers_extension`` (the Doc
attribute for all layers, "elmo_layers"; empty to skip storing them); ``batch_size``;
``device`` ("cpu", "cuda", ...; empty = CUDA if available). The vectors are computed from each
token's text (``token.text``), stateless: a doc's vectors do not depend on its batch.
An ``nlp.to_disk`` folder stores this config, not the ELMo weights: ``spacy.load`` reads the
model again from ``model``.

This is the one module of ``elmo`` that imports its extra at module level: spaCy imports it
through the entry point, and the factory decorator needs spaCy.
"""

from __future__ import annotations

from typing import Iterable, Iterator, List, Optional, Union

import numpy as np

try:
    from spacy.language import Language
    from spacy.tokens import Doc
    from spacy.util import minibatch
except ImportError:
    raise ImportError("the spaCy component needs spaCy: pip install elmo-pytorch[spacy]") from None

from elmo.featurizer import Embedder, select_layers

OUTPUTS = ("average", "top")


def _check_output(output, num_layers: int) -> Union[str, np.ndarray]:
    if isinstance(output, str):
        if output not in OUTPUTS:
            raise ValueError(f"elmo component: output must be one of {OUTPUTS} or a list of "
                             f"{num_layers} layer weights, got {output!r}")
        return output
    weights = np.asarray(output, dtype=np.float32)
    if weights.shape != (num_layers,):
        raise ValueError(f"elmo component: output weights must be {num_layers} numbers (one per "
                         f"layer), got {list(output)!r}")
    return weights


class ElmoComponent:
    """Sets ``doc.tensor`` (n, 2P) and ``doc._.<layers_extension>`` (L+1, n, 2P)."""

    def __init__(self, nlp: Language, name: str, embedder: Embedder,
                 output: Union[str, List[float]] = "average", layers_extension: str = "elmo_layers",
                 batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"elmo component: batch_size must be >= 1, got {batch_size}")
        self.name, self.embedder, self.batch_size = name, embedder, batch_size
        self.output = _check_output(output, embedder.num_layers)
        self.layers_extension = layers_extension or None
        if self.layers_extension and not Doc.has_extension(self.layers_extension):
            Doc.set_extension(self.layers_extension, default=None)

    def __call__(self, doc: Doc) -> Doc:
        return next(iter(self.pipe([doc])))

    def pipe(self, docs: Iterable[Doc], batch_size: Optional[int] = None) -> Iterator[Doc]:
        """Docs in chunks of ``batch_size`` (``nlp.pipe``'s); each chunk is embedded in batches of
        the component's ``batch_size`` sentences, grouped by length."""
        for chunk in minibatch(docs, size=batch_size or self.batch_size):
            sentences = [[token.text for token in doc] for doc in chunk]
            arrays = self.embedder.embed_sentences(sentences, output="all", batch_size=self.batch_size)
            for doc, layers in zip(chunk, arrays):  # layers (L+1, n, 2P)
                layers = np.ascontiguousarray(layers, dtype=np.float32)
                doc.tensor = np.ascontiguousarray(select_layers(layers, self.output))
                if self.layers_extension:
                    doc._.set(self.layers_extension, layers)
                yield doc


@Language.factory(
    "elmo",
    default_config={"model": None, "options_file": None, "weight_file": None, "revision": None,
                    "output": "average", "layers_extension": "elmo_layers", "batch_size": 64,
                    "device": None},
)
def make_elmo(nlp: Language, name: str, model: Optional[str], options_file: Optional[str],
              weight_file: Optional[str], revision: Optional[str], output: Union[str, List[float]],
              layers_extension: str, batch_size: int, device: Optional[str]) -> ElmoComponent:
    if not model and not (options_file and weight_file):
        raise ValueError('elmo component: give config={"model": ...} (a folder, URL, hub id or '
                         'release name) or both "options_file" and "weight_file"')
    embedder = Embedder.from_pretrained(model or None, options_file=options_file or None,
                                        weight_file=weight_file or None, revision=revision or None,
                                        device=device or None, batch_size=batch_size)
    return ElmoComponent(nlp, name, embedder, output=output, layers_extension=layers_extension,
                         batch_size=batch_size)
