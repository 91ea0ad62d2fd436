"""Sentences in, ELMo layers out: the featurizer users import.

    embedder = Embedder.from_pretrained("model_dir")          # or options_file=..., weight_file=...
    layers = embedder.embed_sentence(["The", "cat", "sat"])   # numpy (L+1, 3, 2P)
    for vectors in embedder.embed_sentences(stream, output="top"):   # lazy, input order
        ...
    embedder.embed_file("in.txt", "out.hdf5", output="all")   # the `elmo-embed` command

Sentences are grouped into batches of similar length (fewer padded positions; the biLM's
packed loop skips padding anyway) and results come back in input order. By default every
sentence's embedding is independent of its batch (stateless). With ``stateful=True`` the input
order is kept in consecutive batches of ``batch_size`` and each row carries its LSTM state to the
same row of the next batch, as the original did.

Optionally ``cache_vocabulary(words)`` computes the character encoder's output once for a fixed
word list; those words then skip the character CNN (same numbers, faster on repetitive text).
"""

from __future__ import annotations

import itertools
import logging
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from elmo.chars import (BOS_TOKEN, EOS_TOKEN, TokenBatch, check_sentence, distinct_tokens,
                        words_to_char_ids)
from elmo.model import ElmoBiLM
from elmo.scalar_mix import ScalarMix, weighted_sum

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("all", "top", "average")
Output = Union[str, ScalarMix, Sequence[float]]


class Embedder:
    def __init__(self, model: ElmoBiLM, device: Union[str, torch.device, None] = None,
                 dtype: torch.dtype = torch.float32, batch_size: int = 64,
                 max_tokens_per_batch: int = 6000, stateful: bool = False,
                 compile: bool = False) -> None:
        """``model`` is moved to ``device`` (default: CUDA if available, else CPU) and ``dtype``
        (float32, or bfloat16 for faster reduced-precision inference: the LSTM cell state and the
        outputs stay float32). ``max_tokens_per_batch`` caps a batch's token count, so long
        sentences come in smaller batches and memory stays bounded. ``compile`` runs the model
        through ``torch.compile`` (dynamic shapes; the first batches of new sizes compile).

        On a GPU the host builds each batch's character ids while the device runs the previous
        batch: inputs go up from pinned memory without blocking, results come back the same way,
        and nothing waits for the device except the collection of a finished batch."""
        model.check_has_elmo_layers()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            raise ValueError(f"dtype must be a floating point torch dtype, got {dtype}")
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.stateful = stateful
        self._forward = torch.compile(self.model, dynamic=True) if compile else self.model
        self.batch_size, self.max_tokens_per_batch = batch_size, max_tokens_per_batch
        self._vocab: dict[str, int] = {}
        self._vocab_vectors: Optional[torch.Tensor] = None

    @classmethod
    def from_pretrained(cls, model_dir: Optional[str] = None, *, options_file: Optional[str] = None,
                        weight_file: Optional[str] = None, revision: Optional[str] = None,
                        sha256: Optional[Union[str, dict]] = None, **kwargs) -> "Embedder":
        """Load a model (a local folder, an http(s) URL, a hub id with ``revision``, or a named
        release; see ``elmo.hub``) or an options/weight file pair (local paths or URLs).
        ``sha256`` is the expected digest of the weights file, checked when it is downloaded."""
        from elmo.hub import resolve_file
        from elmo.weights import load_original

        if (options_file is None) != (weight_file is None):
            raise ValueError("pass both options_file and weight_file (or a model directory)")
        if options_file is not None:
            if model_dir is not None:
                raise ValueError("pass either a model directory or options_file + weight_file, not both")
            if revision is not None:
                raise ValueError("revision applies to hub repositories (model_dir='org/name'), not to "
                                 "options_file/weight_file")
            weights = resolve_file(weight_file, sha256=sha256 if isinstance(sha256, str) else None)
            return cls(load_original(options_file, weights), **kwargs)
        if model_dir is None:
            raise ValueError("pass a model directory or options_file + weight_file")
        return cls(ElmoBiLM.from_pretrained(model_dir, revision=revision, sha256=sha256), **kwargs)

    @property
    def stateful(self) -> bool:
        """Whether each row carries its LSTM state to the same row of the next batch (the
        model's own ``stateful``; setting it starts from the initial state again)."""
        return self.model.stateful

    @stateful.setter
    def stateful(self, value: bool) -> None:
        self.model.stateful = bool(value)
        self.model.reset_states()

    @property
    def output_dim(self) -> int:
        return self.model.output_dim

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    # -- character-encoder cache --------------------------------------------------------------
    @torch.inference_mode()
    def cache_vocabulary(self, words: Iterable[str], batch_size: int = 2048) -> int:
        """Precompute the character encoder's output for ``words`` (plus <S> and </S>).

        Returns the number of cached words. Tokens outside the list are still encoded on the fly.
        """
        words = list(dict.fromkeys([BOS_TOKEN, EOS_TOKEN, *words]))
        width = self.model.config.char_cnn.max_characters_per_token
        chunks = [self.model.char_cnn.encode_tokens(
                      words_to_char_ids(words[start : start + batch_size], width).to(self.device))
                  for start in range(0, len(words), batch_size)]
        self._vocab = {w: i for i, w in enumerate(words)}
        self._vocab_vectors = torch.cat(chunks)
        return len(words)

    def _inputs(self, sentences: Sequence[Sequence[str]]) -> tuple[TokenBatch, Optional[torch.Tensor]]:
        """Sentences -> the model's ``TokenBatch`` and, with a vocabulary cache, the vectors of
        its distinct tokens (cached rows looked up, the others encoded now)."""
        words, index = distinct_tokens(sentences)
        width = self.model.config.char_cnn.max_characters_per_token  # 50 in every released model
        tokens = TokenBatch(self._upload(words_to_char_ids(words, width)),
                            self._upload(torch.from_numpy(index)))
        if self._vocab_vectors is None:
            return tokens, None
        # Which tokens are cached is known here, on the host: no device value is read.
        rows = np.array([self._vocab.get(w, -1) for w in words], dtype=np.int64)
        known = rows >= 0
        if known.all():
            return tokens, self._vocab_vectors[self._upload(torch.from_numpy(rows))]
        vectors = self._vocab_vectors.new_empty((len(words), self._vocab_vectors.shape[1]))
        hit, miss = (self._upload(torch.from_numpy(np.flatnonzero(m))) for m in (known, ~known))
        vectors[hit] = self._vocab_vectors[self._upload(torch.from_numpy(rows[known]))]
        vectors[miss] = self.model.char_cnn.encode_tokens(tokens.token_chars[miss])
        return tokens, vectors

    def _upload(self, tensor: torch.Tensor) -> torch.Tensor:
        """A host tensor on the model's device: from pinned memory, without blocking, on CUDA."""
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    # -- embedding ----------------------------------------------------------------------------
    @torch.inference_mode()
    def embed_batch(self, sentences: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """One model call on these sentences, in this order: a list of (L+1, n_i, 2P) float32 arrays."""
        sentences = [check_sentence(s, i) for i, s in enumerate(sentences)]
        if not sentences:
            return []
        return self._collect(self._launch(sentences))

    def _launch(self, sentences: list) -> tuple:
        """Queue one batch on the device and the copy of its layers back to the host; returns
        what ``_collect`` needs. On a GPU this returns before the device has finished."""
        tokens, vectors = self._inputs(sentences)
        lengths = [len(s) for s in sentences]  # known here: the biLM need not read them back
        out = self._forward(tokens, token_vectors=vectors, lengths=lengths)
        layers = torch.stack(out.layers, 1).float()  # (B, L+1, T, 2P)
        if self.device.type != "cuda":
            return layers.cpu(), None, lengths
        host = torch.empty(layers.shape, dtype=layers.dtype, pin_memory=True)
        host.copy_(layers, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return host, done, lengths

    @staticmethod
    def _collect(launched: tuple) -> list[np.ndarray]:
        """Wait for a launched batch and split it into (L+1, n_i, 2P) arrays."""
        layers, done, lengths = launched
        if done is None:
            layers = layers.numpy()
            return [layers[b, :, :n] for b, n in enumerate(lengths)]
        done.synchronize()
        layers = layers.numpy()  # pinned memory: copied out, so the buffer goes back to the pool
        return [layers[b, :, :n].copy() for b, n in enumerate(lengths)]

    def embed_sentence(self, sentence: Sequence[str], output: Output = "all") -> np.ndarray:
        """One tokenized sentence -> (L+1, n, 2P) for "all", else (n, 2P)."""
        return select_layers(self.embed_batch([sentence])[0], output)

    def embed_sentences(self, sentences: Iterable[Sequence[str]], output: Output = "all",
                        batch_size: Optional[int] = None) -> Iterator[np.ndarray]:
        """Lazily embed an iterable of tokenized sentences; yields one array per sentence, in order.

        Reads ahead a window of sentences, batches them by length (stateless mode), and yields
        that window's results in input order, so memory stays bounded on any input length.
        """
        for arrays in self._embed_windows(sentences, batch_size):
            for a in arrays:
                yield select_layers(a, output)

    def _batches(self, sentences: list, batch_size: int) -> Iterator[list[int]]:
        """Index lists of batches: consecutive in stateful mode, else grouped by length."""
        if self.stateful:
            for start in range(0, len(sentences), batch_size):
                yield list(range(start, min(start + batch_size, len(sentences))))
            return
        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
        batch: list[int] = []
        for i in order:
            # Longest first: a batch's padded length is that of its first sentence (+ <S>, </S>).
            padded = (len(sentences[batch[0]]) + 2) * (len(batch) + 1) if batch else 0
            if batch and (len(batch) >= batch_size or padded > self.max_tokens_per_batch):
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    @torch.inference_mode()
    def _embed_list(self, sentences: list, batch_size: int) -> list[np.ndarray]:
        """Every batch is launched before the previous one is collected, so the host prepares
        batch k+1 (and unpacks batch k-1) while the device computes batch k."""
        results: list = [None] * len(sentences)
        previous = None
        for batch in self._batches(sentences, batch_size):
            launched = (batch, self._launch([sentences[i] for i in batch]))
            if previous is not None:
                for i, a in zip(previous[0], self._collect(previous[1])):
                    results[i] = a
            previous = launched
        if previous is not None:
            for i, a in zip(previous[0], self._collect(previous[1])):
                results[i] = a
        return results

    def _embed_windows(self, sentences: Iterable[Sequence[str]], batch_size: Optional[int],
                       window_batches: int = 16) -> Iterator[list[np.ndarray]]:
        batch_size = batch_size or self.batch_size
        iterator, index = iter(sentences), 0
        while True:
            window = list(itertools.islice(iterator, batch_size * window_batches))
            if not window:
                return
            window = [check_sentence(s, index + i) for i, s in enumerate(window)]
            index += len(window)
            yield self._embed_list(window, batch_size)

    def embed_file(self, input_file: str, output_file: str, output: str = "all",
                   batch_size: Optional[int] = None, sentence_index: bool = True,
                   resume: bool = False, force: bool = True,
                   progress: Optional[Callable[[int], None]] = None) -> int:
        """Embed a text file (one whitespace-tokenized sentence per line) into HDF5.

        One float32 dataset per line, named by the line's index: (L+1, n, 2P) for "all", (n, 2P)
        for "top" / "average"; a blank line gives an empty dataset (n = 0), so keys never shift.
        Also ``sentence_to_index``: a JSON string mapping each line's text to its key (omit with
        ``sentence_index=False``). The output is written to ``output_file + ".partial"`` and
        renamed when complete; ``resume=True`` continues such a partial file after checking that
        it was made from the same input, model, layout and dtype; ``force=False`` refuses to
        replace an existing output. ``progress`` is called with the number of lines finished
        after each window. Returns the line count. See ``elmo.dump``.
        """
        from elmo.dump import embed_file

        return embed_file(self, input_file, output_file, output=output, batch_size=batch_size,
                          sentence_index=sentence_index, resume=resume, force=force,
                          progress=progress)


def select_layers(layers: np.ndarray, output: Output) -> np.ndarray:
    """(L+1, n, D) -> the requested view: all, top, average, or a scalar mix (a ``ScalarMix`` or
    L+1 fixed layer weights); the one place that mixes the featurizer's numpy layers."""
    if isinstance(output, str):
        if output == "all":
            return layers
        if output == "top":
            return layers[-1]
        if output == "average":
            return layers.mean(axis=0)
        raise ValueError(f"output must be one of {OUTPUT_FORMATS}, a ScalarMix or a list of "
                         f"layer weights, got {output!r}")
    x = torch.from_numpy(layers)  # (L+1, n, D)
    if isinstance(output, ScalarMix):
        device = output.gamma.device
        mask = torch.ones((1, x.shape[1]), dtype=torch.bool, device=device)
        with torch.no_grad():
            return output(x.unsqueeze(1).to(device), mask)[0].float().cpu().numpy()
    weights = torch.as_tensor(np.asarray(output, dtype=np.float32))
    if weights.shape != (layers.shape[0],):
        raise ValueError(f"a mix needs {layers.shape[0]} layer weights, got {tuple(weights.shape)}")
    return weighted_sum(x, weights).numpy()
