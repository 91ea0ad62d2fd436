"""ELMo: deep contextualized word representations (Peters et al. 2018).

Data flow, with shapes (B sentences, T tokens, C = 50 characters, P = projection size):

    list[list[str]] --batch_to_ids--> char ids (B, T, C)
      --add <S>, </S>-->               (B, T+2, C)
      --CharCNN-->                     token vectors (B, T+2, P)
      --BiLM (n_layers x fwd/bwd)-->   n_layers tensors (B, T+2, 2P)
    layers = [char; char] + BiLM layers: L+1 tensors (B, T+2, 2P)
      --strip <S>, </S>-->             L+1 tensors (B, T, 2P), mask (B, T)
      --ScalarMix (one per task)-->    (B, T, 2P)

``ElmoBiLM`` is the pretrained part (char encoder + biLM) and is what weight files hold.
``Elmo`` adds dropout and any number of learned scalar mixes on top, for task models.
A checkpoint of ours is a directory with ``elmo_config.json`` and ``elmo_weights.pt`` (a
``state_dict``); the original format is ``options.json`` + ``weights.hdf5`` (see ``weights.py``).
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from elmo.bilm import BiLM, BiLMState, detach_state, map_state
from elmo.char_cnn import CharCNN, check_char_ids
from elmo.chars import bos_eos_char_ids
from elmo.config import ElmoConfig
from elmo.scalar_mix import ScalarMix

CONFIG_NAME = "elmo_config.json"
WEIGHTS_NAME = "elmo_weights.pt"


class BiLMOutput(NamedTuple):
    layers: list  # L+1 tensors (B, T+2, 2P): [char; char], then each biLM layer [fwd; bwd]
    mask: torch.Tensor  # (B, T+2) bool, True at <S>, the tokens and </S>
    state: BiLMState  # final state of every row (see elmo.bilm)


class ElmoOutput(NamedTuple):
    representations: list  # one (B, T, 2P) tensor per requested scalar mix
    mask: torch.Tensor  # (B, T) bool
    layers: list  # the L+1 unmixed layers (B, T, 2P)


def add_sentence_boundaries(char_ids: torch.Tensor, bos: torch.Tensor, eos: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, C) ids -> (B, T+2, C) with <S> before and </S> after each row's tokens; mask (B, T+2)."""
    B, T, C = char_ids.shape
    lengths = (char_ids > 0).any(-1).sum(-1)  # (B,)
    out = char_ids.new_zeros((B, T + 2, C))
    out[:, 1 : T + 1] = char_ids
    out[:, 0] = bos
    out[torch.arange(B, device=char_ids.device), lengths + 1] = eos
    mask = torch.arange(T + 2, device=char_ids.device).unsqueeze(0) < (lengths + 2).unsqueeze(1)
    return out, mask


def remove_sentence_boundaries(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T+2, D) with boundaries, mask (B, T+2) -> (B, T, D), mask (B, T)."""
    lengths = mask.long().sum(-1) - 2  # (B,)
    T = x.shape[1] - 2
    new_mask = torch.arange(T, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
    return x[:, 1:-1] * new_mask.unsqueeze(-1).to(x.dtype), new_mask


class ElmoBiLM(nn.Module):
    """Character encoder + bidirectional LM: char ids -> the L+1 ELMo layers.

    Stateless by default: every batch starts from the model's fixed initial state (zeros unless a
    warm state was stored), so a sentence's layers do not depend on its batch. With
    ``stateful = True`` each row starts from the final state of the same row in the previous batch,
    as the original did; ``reset_states()`` forgets it.
    """

    def __init__(self, config: ElmoConfig) -> None:
        super().__init__()
        self.config = config
        self.char_cnn = CharCNN(config.char_cnn, config.bilm.projection_dim)
        self.bilm = BiLM(config.bilm)
        bos, eos = bos_eos_char_ids(config.char_cnn.max_characters_per_token)
        self.register_buffer("bos_ids", torch.from_numpy(bos.copy()), persistent=False)
        self.register_buffer("eos_ids", torch.from_numpy(eos.copy()), persistent=False)
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

    def forward(self, char_ids: torch.Tensor, state: Optional[BiLMState] = None,
                add_boundaries: bool = True, dropout: float = 0.0) -> BiLMOutput:
        """char_ids (B, T, C) from ``batch_to_ids`` -> ``BiLMOutput`` with T+2 positions.

        ``state`` overrides the initial state (rows in batch order); ``add_boundaries=False`` takes
        ids that already hold their sentence tokens (pretraining windows). ``dropout`` is applied
        to each biLM layer's input in training mode.
        """
        if char_ids.dim() != 3 or char_ids.shape[-1] != self.config.char_cnn.max_characters_per_token:
            raise ValueError(f"char_ids must be (batch, tokens, "
                             f"{self.config.char_cnn.max_characters_per_token}), got {tuple(char_ids.shape)}; "
                             "build them with elmo.batch_to_ids")
        check_char_ids(char_ids, self.config.char_cnn.n_characters)
        if add_boundaries:
            char_ids, mask = add_sentence_boundaries(char_ids, self.bos_ids, self.eos_ids)
        else:
            mask = (char_ids > 0).any(-1)
        tokens = self.char_cnn(char_ids)  # (B, T+2, P)
        return self.contextualize(tokens, mask, state, dropout)

    def contextualize(self, tokens: torch.Tensor, mask: torch.Tensor,
                      state: Optional[BiLMState] = None, dropout: float = 0.0) -> BiLMOutput:
        """Token vectors (B, T, P) (e.g. from a cache of ``char_cnn`` outputs), mask (B, T) ->
        ``BiLMOutput``. Positions are taken as given: add <S>/</S> vectors yourself."""
        if state is None and self.stateful:
            state = self._carried_state(tokens.shape[0])
        bilm_layers, final = self.bilm(tokens, mask, state, dropout=dropout)
        if self.stateful:
            self._store_state(final)
        layers = [torch.cat([tokens, tokens], dim=-1).float()] + bilm_layers
        return BiLMOutput(layers, mask, final)

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
    def set_warm_state(self, char_ids: torch.Tensor) -> None:
        """Store a fixed initial state: the final state after reading ``char_ids`` (1, T, C) in order.

        Every later batch (stateless mode) starts from it: still deterministic, but not cold.
        Pass one long row (e.g. a few sentences with their <S>/</S> tokens) and
        ``add_boundaries`` is not applied. The state is saved with the model.
        """
        if char_ids.dim() != 3 or char_ids.shape[0] != 1:
            raise ValueError(f"set_warm_state expects char ids of one row (1, T, C), got {tuple(char_ids.shape)}")
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
        from elmo.serialization import SAFETENSORS_NAME, find_weights, load_weights
        from elmo.weights import find_original_files, load_original

        directory = resolve_model(directory, revision=revision, sha256=sha256, cache=cache)
        config_path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(config_path):
            original = find_original_files(directory)
            if original is None:
                raise FileNotFoundError(
                    f"{directory}: no model found; expected {CONFIG_NAME} + {SAFETENSORS_NAME} or "
                    f"{WEIGHTS_NAME} (this package's format) or options.json + a weights .hdf5 file "
                    "(the original format)")
            return load_original(*original)
        model = cls(ElmoConfig.load(config_path))
        weights = find_weights(directory)
        if weights is None:
            raise FileNotFoundError(f"{directory}: {CONFIG_NAME} is there but the weights "
                                    f"({SAFETENSORS_NAME} or {WEIGHTS_NAME}) are missing")
        model.load_state_dict(load_weights(weights, map_location), strict=True)
        return model


class Elmo(nn.Module):
    """ELMo for task models: the biLM plus ``num_output_representations`` learned scalar mixes.

    ``requires_grad=False`` (the default) freezes the biLM; the mixes always train.
    ``keep_sentence_boundaries=True`` keeps the <S>/</S> positions in the outputs.
    """

    def __init__(self, bilm: ElmoBiLM, num_output_representations: int = 1, dropout: float = 0.5,
                 requires_grad: bool = False, do_layer_norm: bool = False,
                 keep_sentence_boundaries: bool = False,
                 scalar_mix_parameters: Optional[Sequence[float]] = None) -> None:
        super().__init__()
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

    def forward(self, char_ids: torch.Tensor) -> ElmoOutput:
        """char_ids (B, T, C) -> ``ElmoOutput``: mixes (B, T, 2P) each, mask (B, T), layers."""
        out = self.bilm(char_ids)
        layers, mask = out.layers, out.mask
        if not self.keep_sentence_boundaries:
            stripped = [remove_sentence_boundaries(layer, mask) for layer in layers]
            layers, mask = [x for x, _ in stripped], stripped[0][1]
        reps = [self.dropout(mix(layers, mask)) for mix in self.scalar_mixes]
        return ElmoOutput(reps, mask, layers)
