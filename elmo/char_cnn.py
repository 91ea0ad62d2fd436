"""The character encoder of ELMo (Peters et al. 2018, sec. 3.4; Kim et al. 2016).

char ids (B, T, C) -> char embedding (B, T, C, e) -> convolutions of several widths over the C
characters, max-pooled over positions and passed through the activation (relu or tanh) ->
highway layers (relu) -> linear projection to the biLM's input size P (left out with
``char_cnn.projection`` false). Only real tokens (char id row not all zero) are encoded; padding
positions come out as zeros and cost nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from elmo import sync
from elmo.chars import PADDING_CHAR, TokenBatch
from elmo.config import CharCNNConfig

PADDING_ID = PADDING_CHAR + 1  # the padding character after the +1 shift


class Highway(nn.Module):
    """``y = t * relu(x W_t + b_t) + (1 - t) * x`` with the gate ``t = sigmoid(x W_c + b_c)``.

    This is the formula the original TF code computes (it calls ``t`` the carry gate). Both
    products share one ``Linear(d, 2d)``: the first half is the transform, the second the gate.
    The transform is always a relu: the options' ``activation`` is the convolutions' (as in the
    original and in Kim et al. 2016, whose convolutions are tanh and highway layers relu).
    """

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, 2 * dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, dim) -> (N, dim)."""
        for layer in self.layers:
            transform, gate = layer(x).chunk(2, dim=-1)  # (N, dim) each
            gate = torch.sigmoid(gate)
            x = gate * torch.relu(transform) + (1 - gate) * x
        return x


class CharCNN(nn.Module):
    """Token character ids -> one vector per token of size ``output_dim`` (``n_filters`` without
    the projection, ``config.projection`` False)."""

    def __init__(self, config: CharCNNConfig, output_dim: int) -> None:
        super().__init__()
        self.config = config
        self.output_dim = output_dim if config.projection else config.n_filters
        # Row 0 is the "no token" id: kept at zero and never trained.
        self.char_embedding = nn.Embedding(config.n_characters, config.embedding_dim, padding_idx=0)
        self.convolutions = nn.ModuleList(
            nn.Conv1d(config.embedding_dim, count, kernel_size=width) for width, count in config.filters)
        self.highway = Highway(config.n_filters, config.n_highway)
        self.projection = nn.Linear(config.n_filters, output_dim) if config.projection else nn.Identity()

    def encode_tokens(self, char_ids: torch.Tensor) -> torch.Tensor:
        """char_ids (N, C) of real tokens -> (N, output_dim), exactly as ``encode_characters``.

        For the convolutions the tokens are sorted by length and split into two groups, each
        over only the character positions its longest token needs (see ``trim_characters``):
        short words then cost about half as much as over the full width. The highway layers
        and the projection run on all tokens at once.
        """
        N = char_ids.shape[0]
        if N == 0:
            return self.char_embedding.weight.new_zeros((0, self.output_dim))
        if not sync.may_sync(char_ids) or N < 64:  # on a GPU or in a graph: one group, all C positions
            features = self.convolve(self.trim_characters(char_ids))
        else:
            order = torch.argsort((char_ids != PADDING_ID).sum(-1))  # shortest first
            half = N // 2
            parts = [self.convolve(self.trim_characters(char_ids[idx]))
                     for idx in (order[:half], order[half:])]
            features = torch.empty((N, parts[0].shape[1]), device=char_ids.device, dtype=parts[0].dtype)
            features = features.index_put((order,), torch.cat(parts))
        return self.projection(self.highway(features))  # (N, output_dim)

    def encode_characters(self, char_ids: torch.Tensor) -> torch.Tensor:
        """char_ids (N, C) -> (N, output_dim), over all C given character positions."""
        return self.projection(self.highway(self.convolve(char_ids)))

    def convolve(self, char_ids: torch.Tensor) -> torch.Tensor:
        """char_ids (N, C) -> (N, n_filters): convolutions, max-pooled, activation.

        Each convolution is computed as one matrix product over all character windows (chosen
        over ``conv1d`` for CPU speed at these shapes), max-pooled over positions; the bias is
        added after the max (it is constant over positions).
        """
        x = self.char_embedding(char_ids)  # (N, C, e)
        N, C, e = x.shape
        pooled = []
        for conv, (width, count) in zip(self.convolutions, self.config.filters):
            L = C - width + 1
            windows = x.unfold(1, width, 1).reshape(N * L, e * width)  # (N*L, e*w), like the weight
            y = F.linear(windows, conv.weight.view(count, e * width)).view(N, L, count)
            # amax is the faster forward; max().values has the faster backward.
            pooled.append(y.max(1).values if torch.is_grad_enabled() else y.amax(1))  # (N, count)
        x = torch.cat(pooled, dim=-1) + torch.cat([conv.bias for conv in self.convolutions])
        # The activation commutes with the max (both relu and tanh are monotone), so applying
        # it after pooling equals the original's conv -> activation -> max.
        return torch.relu(x) if self.config.activation == "relu" else torch.tanh(x)

    def forward(self, inputs: TokenBatch | torch.Tensor) -> torch.Tensor:
        """A ``TokenBatch`` (or plain char ids (B, T, C)) -> (B, T, output_dim); zeros where there
        is no token. Each distinct token is encoded once (``encode_tokens``) and gathered into
        place: the same result as encoding every position over all C characters."""
        if isinstance(inputs, torch.Tensor):
            if inputs.dim() != 3 or inputs.shape[-1] != self.config.max_characters_per_token:
                raise ValueError(f"char_ids must be (batch, tokens, {self.config.max_characters_per_token}), "
                                 f"got {tuple(inputs.shape)}")
            inputs = TokenBatch.from_char_ids(inputs)
        return self.embed(self.encode_tokens(inputs.token_chars), inputs)

    def embed(self, vectors: torch.Tensor, tokens: TokenBatch) -> torch.Tensor:
        """Vectors of the distinct tokens (U, D) -> (B, T, D) at ``tokens.index``, zero where -1."""
        B, T = tokens.index.shape
        if vectors.shape[0] == 0:
            return vectors.new_zeros((B, T, vectors.shape[-1]))
        out = vectors[tokens.index.clamp(min=0)]  # (B, T, D)
        return out.masked_fill(~tokens.mask.unsqueeze(-1), 0.0)

    def trim_characters(self, char_ids: torch.Tensor) -> torch.Tensor:
        """Drop trailing character positions that cannot change the max-pooled features.

        A window lying wholly in the padding gives the same value for every token, so the
        maximum over positions only needs the windows touching real characters plus one
        all-padding window (when the full width has one): the first ``used + max_width``
        positions, where ``used`` counts the longest token's non-padding ids.
        """
        C = char_ids.shape[-1]
        # On a GPU reading ``used`` would synchronise with the device; in a graph being exported
        # (elmo.onnx_export) it is a value of the graph, and the slice a dynamic one.
        if not (sync.may_sync(char_ids) or torch.compiler.is_exporting()):
            return char_ids
        used = (char_ids != PADDING_ID).sum(-1).max().item()
        keep = torch.sym_min(C, used + max(width for width, _ in self.config.filters))
        return char_ids[:, :keep]


def check_char_ids(char_ids: torch.Tensor, n_characters: int) -> None:
    """Raise a clear error for ids outside the embedding table (instead of an index error); not
    in a graph being exported (it has no values to read)."""
    if torch.compiler.is_exporting():
        return
    if char_ids.numel() and (int(char_ids.max()) >= n_characters or int(char_ids.min()) < 0):
        raise ValueError(f"char_ids must lie in [0, {n_characters}), found values in "
                         f"[{int(char_ids.min())}, {int(char_ids.max())}]; build them with "
                         "elmo.batch_to_ids")
