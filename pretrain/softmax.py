"""The output layer of the LM, shared by the forward and the backward direction.

Three kinds (``SoftmaxConfig.kind``):

* ``full``: logits for the whole vocabulary.
* ``sampled`` (the original's, Jean et al. 2015): in training, the true word's logit competes with
  ``num_samples`` negatives drawn once per batch from a log-uniform (Zipfian) distribution over the
  frequency-sorted vocabulary, unique, as TensorFlow's ``log_uniform_candidate_sampler``. Each
  logit is corrected by the log of the word's expected count in the draw, and a negative equal to
  a row's own target ("accidental hit") is removed from that row. Only the sampled rows of the
  weight matrix are multiplied: the full vocabulary's logits are never formed. Evaluation uses the
  full softmax. When the vocabulary is not larger than ``num_samples`` the full softmax is exact
  and cheaper, so it is used instead.
* ``adaptive``: ``torch.nn.AdaptiveLogSoftmaxWithLoss`` (Grave et al. 2017), exact.

Losses come back per token (N,) in float32, whatever the autocast dtype of the matmul.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from pretrain.config import SoftmaxConfig


def log_uniform_probability(ids: torch.Tensor, range_max: int) -> torch.Tensor:
    """P(k) = (log(k + 2) - log(k + 1)) / log(range_max + 1), float64."""
    ids = ids.double()
    return (torch.log1p(1.0 / (ids + 1.0))) / math.log(range_max + 1)


def log_uniform_candidates(num_samples: int, range_max: int, generator: torch.Generator,
                           max_draws: Optional[int] = None) -> tuple[torch.Tensor, int]:
    """Draw from the log-uniform distribution until ``num_samples`` distinct ids appear.

    Returns the distinct ids (sorted) and the number of draws it took (``num_tries``). After
    ``max_draws`` draws (default 32 x num_samples) it stops with fewer ids; the expected-count
    correction stays exact for the draws made.
    """
    if num_samples >= range_max:
        raise ValueError(f"cannot draw {num_samples} distinct ids from {range_max}")
    max_draws = max_draws or 32 * num_samples
    log_range = math.log(range_max + 1)
    n = min(2 * num_samples, max_draws)
    while True:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        draws = (torch.exp(u * log_range).long() - 1).clamp_(0, range_max - 1)  # (n,)
        uniq, inverse = torch.unique(draws, return_inverse=True)
        if len(uniq) >= num_samples or n >= max_draws:
            break
        n = min(2 * n, max_draws)
    first = torch.full((len(uniq),), n, dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(n), reduce="amin")  # first draw of each id
    order = first.argsort()[:num_samples]
    num_tries = int(first[order].max()) + 1 if len(uniq) >= num_samples else n
    return uniq[order].sort().values, num_tries


def expected_count(ids: torch.Tensor, range_max: int, num_tries: int) -> torch.Tensor:
    """Probability that ``ids`` appear in ``num_tries`` draws: 1 - (1 - p)^num_tries (float64)."""
    p = log_uniform_probability(ids, range_max)
    return -torch.expm1(num_tries * torch.log1p(-p))


class LMSoftmax(nn.Module):
    def __init__(self, dim: int, vocab_size: int, config: SoftmaxConfig) -> None:
        super().__init__()
        self.dim, self.vocab_size, self.config = dim, vocab_size, config
        self.kind = config.kind
        if self.kind == "sampled" and config.num_samples >= vocab_size:
            self.kind = "full"  # every word is a candidate anyway: exact and cheaper
        if self.kind == "adaptive":
            cutoffs = [c for c in config.adaptive_cutoffs if c < vocab_size - 1] or \
                [max(1, vocab_size // 2)]
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(dim, vocab_size, cutoffs,
                                                          div_value=config.adaptive_div_value)
        else:
            # bilm-tf's initialisation: N(0, 1/dim) weights, zero bias.
            self.weight = nn.Parameter(torch.randn(vocab_size, dim) / math.sqrt(dim))
            self.bias = nn.Parameter(torch.zeros(vocab_size))

    @torch.no_grad()
    def init_bias(self, log_probs: torch.Tensor) -> None:
        """Start from the unigram model: bias = log frequency (V,) (full and sampled kinds)."""
        if self.kind != "adaptive":
            self.bias.copy_(log_probs.to(self.bias.dtype))

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """hidden (N, dim), targets (N,) -> loss per token (N,), float32.

        In training mode with ``kind == "sampled"`` this is the sampled-softmax loss (negatives
        from ``generator``); otherwise the exact negative log-likelihood.
        """
        if hidden.shape[0] == 0:
            return hidden.new_zeros(0, dtype=torch.float32)
        if self.kind == "adaptive":
            return -self.adaptive(hidden.float(), targets).output
        if self.kind == "sampled" and self.training:
            return self.sampled_loss(hidden, targets, generator)
        if torch.is_grad_enabled():
            logits = nn.functional.linear(hidden, self.weight, self.bias).float()  # (N, V)
            return nn.functional.cross_entropy(logits, targets, reduction="none")
        return self.full_nll_chunked(hidden, targets)

    def full_nll_chunked(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Exact NLL without keeping more than ~16M logits at once (evaluation)."""
        rows = max(1, (1 << 24) // self.vocab_size)
        out = []
        for i in range(0, hidden.shape[0], rows):
            logits = nn.functional.linear(hidden[i : i + rows], self.weight, self.bias).float()
            out.append(nn.functional.cross_entropy(logits, targets[i : i + rows], reduction="none"))
        return torch.cat(out)

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full log-probabilities (N, V) (small vocabularies, tests)."""
        if self.kind == "adaptive":
            return self.adaptive.log_prob(hidden.float())
        return torch.log_softmax(nn.functional.linear(hidden, self.weight, self.bias).float(), -1)

    def sampled_loss(self, hidden: torch.Tensor, targets: torch.Tensor,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        V = self.vocab_size
        samples, num_tries = log_uniform_candidates(self.config.num_samples, V, generator)
        samples = samples.to(hidden.device)  # (S,) sorted
        log_q_samples = torch.log(expected_count(samples, V, num_tries)).float()  # (S,)
        log_q_true = torch.log(expected_count(targets, V, num_tries)).float()  # (N,)
        # One gather for negatives and targets: each index op makes a dense (V, dim) gradient.
        S = len(samples)
        rows = self.weight[torch.cat([samples, targets])]  # (S + N, dim)
        bias = self.bias[torch.cat([samples, targets])].float()  # (S + N,)
        sampled = torch.mm(hidden, rows[:S].to(hidden.dtype).t()).float()  # (N, S)
        sampled = sampled + (bias[:S] - log_q_samples)
        true = (hidden.float() * rows[S:].float()).sum(-1) + bias[S:] - log_q_true  # (N,)
        # Accidental hits: a negative equal to the row's target is not a negative for that row.
        pos = torch.searchsorted(samples, targets).clamp_(max=len(samples) - 1)  # (N,)
        hit = samples[pos] == targets
        rows = hit.nonzero().squeeze(1)
        sampled.index_put_((rows, pos[rows]), torch.tensor(float("-inf"), device=hidden.device))
        return torch.logaddexp(true, torch.logsumexp(sampled, dim=-1)) - true
