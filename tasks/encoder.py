"""Token features for the task heads: a learned scalar mix of the ELMo layers, trainable word
embeddings and a character CNN, concatenated.

With ELMo (Peters et al. 2018, sec. 3.3) the feature of token k is ``gamma * sum_j s_j h_kj`` over
the L+1 layers (``elmo.ScalarMix``, owned here, one per task model), concatenated with the
baseline's input features as the paper does. The layers come from the batch when they were cached, or from
running the biLM (frozen: without gradients; fine-tuned: with them). The baseline without ELMo is
the same model without the biLM: word embeddings plus a character CNN (``elmo.char_cnn.CharCNN``
with a small configuration), trained from scratch. ``word_dim`` / ``char_dim`` = 0 drop either.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from elmo import CharCNNConfig, ElmoBiLM, ElmoOutput, ScalarMix, TokenBatch
from elmo.bilm import reverse_padded
from elmo.char_cnn import CharCNN
from elmo.chars import MAX_CHARACTERS_PER_TOKEN
from tasks.config import TaskConfig
from tasks.data import TaskBatch


class Dropout(nn.Module):
    """Inverted dropout with the distribution of ``nn.Dropout``: in training each element is
    zeroed with probability ``p`` and the others are scaled by 1 / (1 - p); in evaluation the
    input passes unchanged. The mask compares float32 uniforms with ``p``, which on the CPU is
    cheaper than the ``bernoulli_`` draw of ``nn.Dropout`` (figures: docs/benchmarks.md).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class TokenEncoder(nn.Module):
    def __init__(self, cfg: TaskConfig, num_words: int, bilm: Optional[ElmoBiLM]) -> None:
        super().__init__()
        if cfg.elmo.use and bilm is None:
            raise ValueError("elmo.use is set but no ELMo model was given")
        self.fine_tune = cfg.elmo.fine_tune
        self.bilm = bilm if cfg.elmo.use else None
        self.scalar_mix = None
        self.output_dim = 0
        if self.bilm is not None:
            for p in self.bilm.parameters():
                p.requires_grad_(cfg.elmo.fine_tune)
            self.scalar_mix = ScalarMix(self.bilm.num_layers, do_layer_norm=cfg.elmo.do_layer_norm)
            self.output_dim += self.bilm.output_dim
        self.elmo_dropout = Dropout(cfg.elmo.dropout)
        self.word_embedding = None
        if cfg.head.word_dim > 0:
            self.word_embedding = nn.Embedding(num_words, cfg.head.word_dim, padding_idx=0)
            self.output_dim += cfg.head.word_dim
        self.char_cnn = None
        if cfg.head.char_dim > 0:
            self.char_cnn = CharCNN(CharCNNConfig(embedding_dim=16, filters=cfg.head.char_filter_pairs(),
                                                  n_highway=1), cfg.head.char_dim)
            self.output_dim += cfg.head.char_dim
        if self.output_dim == 0:
            raise ValueError("the task model has no input features: enable ELMo, word_dim or char_dim")

    def needs_chars(self, cached: bool = False) -> bool:
        """Whether batches must carry character ids: for the char CNN, or for the biLM when its
        layers are not ``cached``."""
        return self.char_cnn is not None or (self.bilm is not None and not cached)

    def char_width(self) -> int:
        """The width of the character ids batches carry: the biLM's ``max_characters_per_token``
        (the head's own char CNN, width-agnostic, reads the same ids), else the char CNN's."""
        if self.bilm is not None:
            return self.bilm.config.char_cnn.max_characters_per_token
        return self.char_cnn.config.max_characters_per_token if self.char_cnn is not None else \
            MAX_CHARACTERS_PER_TOKEN

    def run_elmo(self, tokens: TokenBatch) -> ElmoOutput:
        """Run the biLM on a batch's tokens: layers L+1 x (B, T, 2P), mask (B, T)."""
        if self.fine_tune:
            return self.bilm(tokens)
        self.bilm.eval()  # frozen means deterministic too
        with torch.no_grad():
            return self.bilm(tokens)

    def forward(self, batch: TaskBatch) -> torch.Tensor:
        """-> token features (B, T, output_dim); zero where ``batch.mask`` is False.

        The ELMo features come from ``batch.elmo`` (cached layers) or from running the biLM on
        ``batch.tokens``: an ``ElmoOutput`` either way."""
        features = []
        if self.bilm is not None:
            elmo = batch.elmo if batch.elmo is not None else self.run_elmo(batch.tokens)
            features.append(self.elmo_dropout(self.scalar_mix(elmo.layers, elmo.mask)))
        if self.word_embedding is not None:
            features.append(self.word_embedding(batch.word_ids))
        if self.char_cnn is not None:
            features.append(self.char_cnn(batch.tokens))
        x = torch.cat(features, dim=-1) if len(features) > 1 else features[0]
        return x * batch.mask.unsqueeze(-1).to(x.dtype)

    def mix_penalty(self) -> torch.Tensor:
        """Sum of squares of the scalar-mix weights (the L2 term of the loss); 0 without ELMo."""
        if self.scalar_mix is None:
            return torch.zeros((), device=next(self.parameters()).device)
        return (self.scalar_mix.scalar_parameters ** 2).sum()


class SequenceEncoder(nn.Module):
    """A (deep) BiLSTM: (B, T, D_in) -> (B, T, 2H), zeros at padding.

    Each direction of each layer is a one-way ``nn.LSTM``; the backward one reads every row
    reversed within its own length (``elmo.bilm.reverse_padded``), so padding never reaches a
    real position, and no packed sequence is built.

    With ``residual`` every layer after the first adds its input to its output (He et al. 2017
    connect their deep SRL BiLSTM so): without it a 4-layer stack trained on a small set sits at
    the all-``O`` solution for many epochs before it learns anything else.
    """

    def __init__(self, input_dim: int, hidden_dim: int, num_layers: int, dropout: float,
                 residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.ModuleList(
            nn.ModuleList(nn.LSTM(input_dim if k == 0 else 2 * hidden_dim, hidden_dim, batch_first=True)
                          for _ in range(2))
            for k in range(num_layers))
        self.dropout = Dropout(dropout)
        self.output_dim = 2 * hidden_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.long().sum(-1)  # (B,)
        m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)

        def flip(t: torch.Tensor) -> torch.Tensor:  # (B, T, D), each row reversed in its length
            return reverse_padded(t, lengths, time_dim=1)

        for k, (forward, backward) in enumerate(self.layers):
            skip = x
            if k > 0:
                x = self.dropout(x)
            fwd, _ = forward(x)  # (B, T, H)
            bwd, _ = backward(flip(x))
            x = torch.cat([fwd, flip(bwd)], dim=-1) * m  # (B, T, 2H)
            if self.residual and k > 0:
                x = x + skip
        return x
