"""ELMo: deep contextualized word representations (Peters et al. 2018).

Data flow, with shapes (B sentences, T tokens, U distinct tokens, C = 50 characters,
P = projection size):

    list[list[str]] --batch_to_tokens--> TokenBatch: chars (U, C), index (B, T)
                    (or --batch_to_ids--> plain char ids (B, T, C), deduplicated the same way)
      --add <S>, </S>-->               index (B, T+2), chars (U+2, C)
      --CharCNN-->                     one vector per distinct token (U+2, P), gathered (B, T+2, P)
      --BiLM (n_layers x fwd/bwd)-->   n_layers tensors (B, T+2, 2P)
    layers = [char; char] + BiLM layers: L+1 tensors (B, T+2, 2P)
      --strip <S>, </S>-->             ElmoOutput: L+1 tensors (B, T, 2P), mask (B, T)
      --ScalarMix (one per task)-->    (B, T, 2P)

One name per part of the model:

* ``elmo.bilm.BiLM``: the forward and backward recurrent stacks only (token vectors -> layers).
* ``ElmoBiLM``: the pretrained model, character CNN + ``BiLM``; what weight files hold and the
  one entrance every consumer calls (the featurizer, the layer cache, the task heads, the
  pretraining LM). The sentence boundaries are added and removed here and nowhere else (the ONNX
  graph of ``elmo.onnx_export`` is this forward too, captured by ``torch.export``).
* ``Elmo``: ``ElmoBiLM`` plus learned scalar mixes and dropout, for task models.
* ``pretrain.lm.BidirectionalLM``: ``ElmoBiLM`` plus the softmax, for pretraining.

A checkpoint of ours is a directory with ``elmo_config.json`` and ``elmo_weights.safetensors``
(a ``state_dict``; ``elmo_weights.pt`` without safetensors or from earlier versions, see
``serialization.py``); the original format is ``options.json`` + ``weights.hdf5`` (see ``weights.py``).
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import nn

from elmo import sync
from elmo.bilm import BiLM, BiLMState, detach_state, map_state
from elmo.char_cnn import CharCNN, check_char_ids
from elmo.chars import TokenBatch, bos_eos_char_ids
from elmo.config import ElmoConfig
from elmo.hub import CONFIG_NAME  # the file names of a model folder live in elmo.hub
from elmo.scalar_mix import ScalarMix


class ElmoOutput(NamedTuple):
    """What ``ElmoBiLM`` (and ``Elmo``) return.

    ``layers``: L+1 tensors (B, T, 2P), float32: [char; char], then each biLM layer [fwd; bwd]
    (T+2 positions with ``keep_boundaries`` or for inputs that hold their own boundaries; (B, T, P),
    one direction's half, when one direction was asked for);
    ``mask`` (B, T) bool; ``state``: the final biLM state of every row (see ``elmo.bilm``);
    ``representations``: the scalar mixes (B, T, 2P) of ``Elmo``, empty from ``ElmoBiLM``.
    """

    layers: list
    mask: torch.Tensor
    state: Optional[BiLMState] = None
    representations: Sequence[torch.Tensor] = ()


BiLMOutput = ElmoOutput  # the former name of ElmoBiLM's output, kept importable


def add_sentence_boundaries(tokens: TokenBatch, boundary_chars: torch.Tensor) -> TokenBatch:
    """(B, T) positions -> (B, T+2) with <S> before and </S> after each row's tokens.

    ``boundary_chars`` (2, C) are the ids of <S> and </S>; they become the last two rows of
    ``token_chars`` (which is where ``torch.unique`` would sort them too).
    """
    index = tokens.index
    B, T = index.shape
    U = tokens.token_chars.shape[0]
    lengths = (index >= 0).sum(-1)  # (B,)
    out = index.new_full((B, T + 2), -1)
    out[:, 1 : T + 1] = index
    out[:, 0] = U
    out[torch.arange(B, device=index.device), lengths + 1] = U + 1
    chars = torch.cat([tokens.token_chars, boundary_chars.to(tokens.token_chars.dtype)])
    return TokenBatch(chars, out)


def remove_sentence_boundaries(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T+2, D) with boundaries, mask (B, T+2) -> (B, T, D), mask (B, T)."""
    lengths = mask.long().sum(-1) - 2  # (B,)
    T = x.shape[1] - 2
    new_mask = torch.arange(T, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
    return x[:, 1:-1] * new_mask.unsqueeze(-1).to(x.dtype), new_mask


class ElmoBiLM(nn.Module):
    """Character encoder + bidirectional LM: token batches -> the L+1 ELMo layers.

    Stateless by default: every batch starts from the model's fixed initial state (zeros unless a
    warm state was stored), so a sentence's layers do not depend on its batch. With
    ``stateful = True`` each row starts from the final state of the same row in the previous batch,
    as the original did; ``reset_states()`` forgets it.
    """

    def __init__(self, config: ElmoConfig) -> None:
        super().__init__()
        self.config = config
        self.char_cnn = CharCNN(config.char_cnn, config.bilm.projection_dim)
        self.bilm = BiLM(config.bilm, input_dim=self.char_cnn.output_dim)
        bos, eos = bos_eos_char_ids(config.char_cnn.max_characters_per_token)
        self.register_buffer("boundary_chars", torch.from_numpy(np.stack([bos, eos])), persistent=False)
        self.stateful = False
        self._state: Optional[BiLMState] = None

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    def reset_states(self) -> None:
        """Forget the carried state of ``stateful`` mode."""
        self._state = None

    def forward(self, inputs: TokenBatch | torch.Tensor, state: Optional[BiLMState] = None, *,
                add_boundaries: bool = True, keep_boundaries: bool = False, dropout: float = 0.0,
                token_vectors: Optional[torch.Tensor] = None,
                lengths: Optional[Sequence[int]] = None, directions: str = "both",
                input_dropout: bool = True) -> ElmoOutput:
        """A ``TokenBatch`` (``batch_to_tokens``) or char ids (B, T, C) (``batch_to_ids``) ->
        ``ElmoOutput`` with L+1 layers (B, T, 2P) and the mask (B, T).

        <S> and </S> are added around each row's tokens and removed from the outputs, unless
        ``keep_boundaries`` (then T+2 positions, mask (B, T+2)). ``add_boundaries=False`` takes
        inputs that hold their own sentence tokens (pretraining windows) and returns every position
        as given. ``state`` overrides the initial state (rows in batch order). ``dropout`` is
        applied to each biLM layer's input in training mode (not to the first layer's with
        ``input_dropout=False``). ``directions`` "forward" or "backward" runs that stack of the
        biLM alone (``elmo.bilm.BiLM.forward``): every layer is then (B, T, P), the character layer
        included, and the other stack's state passes through unchanged. ``token_vectors`` (U, P), the
        character encoder's output for the rows of ``inputs.token_chars`` when already known (the
        featurizer's vocabulary cache), skips the character CNN for those tokens. ``lengths``, the B
        rows' token counts when the caller knows them, spares the biLM reading them back from a GPU
        (``elmo.sync``).

        Character ids outside the embedding table raise a ``ValueError``; a ``TokenBatch``'s values
        are checked when it is on the CPU (on a GPU the check would stall the queue).
        """
        tokens = self._token_batch(inputs)
        if add_boundaries:
            self.check_has_elmo_layers()
        D = self.config.token_dim
        if token_vectors is not None and token_vectors.shape != (tokens.token_chars.shape[0], D):
            size = "projection_dim" if self.config.char_cnn.projection else "char_cnn.n_filters"
            raise ValueError(f"token_vectors must be (distinct tokens, {size}) = "
                             f"{(tokens.token_chars.shape[0], D)}, got {tuple(token_vectors.shape)}")
        if add_boundaries:
            tokens = add_sentence_boundaries(tokens, self.boundary_chars)
            if token_vectors is not None:
                token_vectors = torch.cat([token_vectors, self.char_cnn.encode_tokens(self.boundary_chars)])
        if token_vectors is None:
            token_vectors = self.char_cnn.encode_tokens(tokens.token_chars)  # (U, P)
        x = self.char_cnn.embed(token_vectors, tokens)  # (B, T+2, P)
        mask = tokens.mask
        if state is None and self.stateful:
            state = self._carried_state(x.shape[0])
        if lengths is not None and add_boundaries:
            lengths = [n + 2 for n in lengths]  # <S> and </S>
        bilm_layers, final = self.bilm(x, mask, state, dropout=dropout, lengths=lengths,
                                       directions=directions, input_dropout=input_dropout)
        if self.stateful:
            self._store_state(final)
        char_layer = torch.cat([x, x], dim=-1) if directions == "both" else x
        layers = [char_layer.float()] + bilm_layers
        if add_boundaries and not keep_boundaries:
            stripped = [remove_sentence_boundaries(layer, mask) for layer in layers]
            layers, mask = [layer for layer, _ in stripped], stripped[0][1]
        return ElmoOutput(layers, mask, final)

    def check_has_elmo_layers(self) -> None:
        """Raise a ``ValueError`` for a model without the character projection: a language model
        only, whose token layer cannot be mixed with its LSTM layers."""
        if not self.config.char_cnn.projection:
            raise ValueError(f"this model has no character projection (char_cnn.projection false): "
                             f"its token layer ({self.config.token_dim} features) differs in size from "
                             f"its LSTM layers ({self.config.bilm.projection_dim}), so it is a language "
                             "model only and has no ELMo layers to embed or mix; measure it with "
                             "elmo-pretrain evaluate, or train with char_cnn.projection true")

    def _token_batch(self, inputs: TokenBatch | torch.Tensor) -> TokenBatch:
        """Check the input and return it as a ``TokenBatch``."""
        C = self.config.char_cnn.max_characters_per_token
        if isinstance(inputs, torch.Tensor):
            if inputs.dim() != 3 or inputs.shape[-1] != C:
                raise ValueError(f"char_ids must be (batch, tokens, {C}), got {tuple(inputs.shape)}; "
                                 "build them with elmo.batch_to_ids (or a TokenBatch with "
                                 "elmo.batch_to_tokens)")
            check_char_ids(inputs, self.config.char_cnn.n_characters)
            return TokenBatch.from_char_ids(inputs)
        if not isinstance(inputs, TokenBatch):
            raise TypeError(f"ElmoBiLM takes a TokenBatch or char ids (batch, tokens, {C}), got "
                            f"{type(inputs).__name__}")
        chars, index = inputs
        if chars.dim() != 2 or chars.shape[1] != C or index.dim() != 2:
            raise ValueError(f"a TokenBatch must hold token_chars (tokens, {C}) and index (batch, "
                             f"positions), got {tuple(chars.shape)} and {tuple(index.shape)}")
        if not sync.may_sync(index):  # value checks would synchronise with the device
            return inputs
        if index.numel() and (int(index.max()) >= chars.shape[0] or int(index.min()) < -1):
            raise ValueError(f"TokenBatch.index must lie in [-1, {chars.shape[0]}) (rows of "
                             f"token_chars, -1 = no token), found [{int(index.min())}, {int(index.max())}]")
        check_char_ids(chars, self.config.char_cnn.n_characters)
        return inputs

    # -- stateful mode ------------------------------------------------------------------------
    def _carried_state(self, batch: int) -> BiLMState:
        default = self.bilm.default_state(batch)
        if self._state is None:
            return default
        # Rows beyond the carried ones (a larger batch than before) start from the default.
        return map_state(lambda s, d: torch.cat([s[:batch], d[s.shape[0]:]]), self._state, default)

    def _store_state(self, final: BiLMState) -> None:
        final = detach_state(final)
        if self._state is None or self._state[0][0][0].shape[0] <= final[0][0][0].shape[0]:
            self._state = final
            return
        # A smaller batch updates its rows and leaves the others as they were (the original's rule).
        self._state = map_state(lambda new, old: torch.cat([new, old[new.shape[0]:]]), final, self._state)

    @torch.no_grad()
    def set_warm_state(self, char_ids: TokenBatch | torch.Tensor) -> None:
        """Store a fixed initial state: the final state after reading one row in order, char ids
        (1, T, C) or a ``TokenBatch`` of one row.

        Every later batch (stateless mode) starts from it: still deterministic, but not cold.
        Pass one long row (e.g. a few sentences with their <S>/</S> tokens) and
        ``add_boundaries`` is not applied. The state is saved with the model.
        """
        shape = tuple(char_ids.index.shape if isinstance(char_ids, TokenBatch) else char_ids.shape)
        rows_ok = len(shape) == (2 if isinstance(char_ids, TokenBatch) else 3) and shape[0] == 1
        if not rows_ok:
            raise ValueError(f"set_warm_state expects char ids of one row (1, T, C) or a TokenBatch "
                             f"of one row, got {shape}")
        was_training, stateful = self.training, self.stateful
        self.eval()
        self.stateful = False
        try:
            zero = map_state(torch.zeros_like, self.bilm.default_state(1))
            final = self(char_ids, state=zero, add_boundaries=False).state
        finally:
            self.train(was_training)
            self.stateful = stateful
        self.bilm.set_initial_state(final)

    # -- checkpoints --------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, safe_serialization: Optional[bool] = None
                        ) -> None:
        """Write ``elmo_config.json`` and the weights (each atomically) into ``directory``.

        The weights are ``elmo_weights.safetensors`` when safetensors is installed (or
        ``safe_serialization=True``), else ``elmo_weights.pt``; a ``.sha256`` of the file is
        written beside it (see ``elmo.serialization``).
        """
        from elmo.serialization import save_weights

        os.makedirs(directory, exist_ok=True)
        self.config.save(os.path.join(directory, CONFIG_NAME))
        save_weights(self.state_dict(), directory, safe_serialization)

    def push_to_hub(self, repo_id: str, *, revision: Optional[str] = None, private: Optional[bool] = None,
                    commit_message: str = "Upload ELMo model", token: Optional[str] = None) -> str:
        """Upload the ``save_pretrained`` folder to a model hub repository (extra ``[hub]``);
        ``from_pretrained(repo_id, revision=...)`` reads it back. Returns the commit URL."""
        from elmo.hub import push_folder

        return push_folder(self.save_pretrained, repo_id, revision=revision, private=private,
                           commit_message=commit_message, token=token)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                        *, revision: Optional[str] = None, sha256: Optional[str | dict] = None,
                        cache: Optional[str] = None) -> "ElmoBiLM":
        """Load a model: a local folder, an http(s) URL of one, a hub id (``org/name``, with
        ``revision``) or a named release (``elmo.hub.RELEASES``); see ``elmo.hub``. The folder holds
        ours (elmo_config.json + elmo_weights.safetensors or .pt) or the original format
        (options.json + weights.hdf5 / a single *.hdf5). ``sha256`` is the weights file's
        expected digest (checked on download)."""
        from elmo.hub import resolve_model
        from elmo.serialization import SAFETENSORS_NAME, TORCH_NAME, find_weights, load_weights
        from elmo.weights import find_original_files, load_original

        directory = resolve_model(directory, revision=revision, sha256=sha256, cache=cache)
        config_path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(config_path):
            original = find_original_files(directory)
            if original is None:
                raise FileNotFoundError(
                    f"{directory}: no model found; expected {CONFIG_NAME} + {SAFETENSORS_NAME} or "
                    f"{TORCH_NAME} (this package's format) or options.json + a weights .hdf5 file "
                    "(the original format)")
            return load_original(*original)
        model = cls(ElmoConfig.load(config_path))
        weights = find_weights(directory)
        if weights is None:
            raise FileNotFoundError(f"{directory}: {CONFIG_NAME} is there but the weights "
                                    f"({SAFETENSORS_NAME} or {TORCH_NAME}) are missing")
        model.load_state_dict(load_weights(weights, map_location), strict=True)
        return model


class Elmo(nn.Module):
    """ELMo for task models: ``ElmoBiLM`` plus ``num_output_representations`` learned scalar mixes.

    ``requires_grad=False`` (the default) freezes the biLM; the mixes always train.
    ``keep_sentence_boundaries=True`` keeps the <S>/</S> positions in the outputs.
    """

    def __init__(self, bilm: ElmoBiLM, num_output_representations: int = 1, dropout: float = 0.5,
                 requires_grad: bool = False, do_layer_norm: bool = False,
                 keep_sentence_boundaries: bool = False,
                 scalar_mix_parameters: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        bilm.check_has_elmo_layers()
        self.bilm = bilm
        self.keep_sentence_boundaries = keep_sentence_boundaries
        self.dropout = nn.Dropout(dropout)
        for p in self.bilm.parameters():
            p.requires_grad_(requires_grad)
        self.scalar_mixes = nn.ModuleList(
            ScalarMix(bilm.num_layers, do_layer_norm=do_layer_norm,
                      initial_weights=scalar_mix_parameters,
                      trainable=scalar_mix_parameters is None)
            for _ in range(num_output_representations))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs) -> "Elmo":
        return cls(ElmoBiLM.from_pretrained(directory), **kwargs)

    def get_output_dim(self) -> int:
        return self.bilm.output_dim

    def forward(self, inputs: TokenBatch | torch.Tensor) -> ElmoOutput:
        """A ``TokenBatch`` or char ids (B, T, C) -> ``ElmoOutput``: layers, mask (B, T), state
        and ``representations``, the mixes (B, T, 2P) each."""
        out = self.bilm(inputs, keep_boundaries=self.keep_sentence_boundaries)
        reps = [self.dropout(mix(out.layers, out.mask)) for mix in self.scalar_mixes]
        return out._replace(representations=reps)
