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

import functools
import math
from typing import NamedTuple, Optional, Union

import torch
from torch import nn

from pretrain.config import SoftmaxConfig


def log_uniform_probability(ids: torch.Tensor, range_max: int) -> torch.Tensor:
    """P(k) = (log(k + 2) - log(k + 1)) / log(range_max + 1), float64."""
    ids = ids.double()
    return (torch.log1p(1.0 / (ids + 1.0))) / math.log(range_max + 1)


def draws_for(num_samples: int, range_max: int, max_draws: Optional[int] = None) -> int:
    """How many log-uniform draws ``log_uniform_candidates`` makes: enough that ``num_samples``
    distinct ids are all but certain among them (expected distinct count at least num_samples +
    6 standard deviations), at most ``max_draws`` (default 32 x num_samples).

    The expected number of distinct ids in n draws is sum_k 1 - (1 - p_k)^n; its variance is
    below its mean, so 6 sqrt(num_samples) is a generous margin. Computed once per (S, V).
    """
    return _draws_for(int(num_samples), int(range_max), int(max_draws or 32 * num_samples))


@functools.lru_cache(maxsize=64)
def _draws_for(num_samples: int, range_max: int, max_draws: int) -> int:
    log_q = torch.log1p(-log_uniform_probability(torch.arange(range_max), range_max))  # (V,)
    goal = num_samples + 6.0 * math.sqrt(num_samples)

    def distinct(n: int) -> float:
        return float(-torch.expm1(n * log_q).sum())

    if distinct(max_draws) < goal:
        return max_draws
    lo, hi = num_samples, max_draws
    while lo < hi:
        mid = (lo + hi) // 2
        if distinct(mid) >= goal:
            hi = mid
        else:
            lo = mid + 1
    return lo


class Candidates(NamedTuple):
    """The negatives of one sampled-softmax step (``log_uniform_candidates``)."""

    ids: torch.Tensor        # (S,) long, sorted
    num_tries: torch.Tensor  # () long: draws it took to see them
    valid: torch.Tensor      # (S,) bool: False at a slot that repeats an id (too few distinct)


def log_uniform_candidates(num_samples: int, range_max: int, generator: torch.Generator,
                           max_draws: Optional[int] = None,
                           device: Optional[torch.device] = None) -> Candidates:
    """The first ``num_samples`` distinct ids of a sequence of log-uniform draws, on ``device``.

    Makes a fixed number of draws (``draws_for``) so that every shape is known in advance and
    nothing is read back to the host: on a GPU the draw, the de-duplication and the expected-count
    correction all stay on the device (``generator`` must live there; default: its device).
    Returns ``(ids, num_tries, valid)``: ``ids`` (S,) sorted, ``num_tries`` a 0-dim long tensor
    (the draws it took to see the S distinct ids, as TensorFlow's sampler reports), ``valid`` (S,)
    bool. When the draws held fewer than S distinct ids (nearly impossible below the cap, certain
    when S is close to V) the missing slots repeat an id and are marked invalid, and num_tries
    is the number of draws made; the expected-count correction stays exact for the draws made.
    """
    if num_samples >= range_max:
        raise ValueError(f"cannot draw {num_samples} distinct ids from {range_max}")
    device = torch.device(device) if device is not None else generator.device
    M = draws_for(num_samples, range_max, max_draws)
    u = torch.rand(M, generator=generator, dtype=torch.float64, device=generator.device).to(device)
    draws = (torch.exp(u * math.log(range_max + 1)).long() - 1).clamp_(0, range_max - 1)  # (M,)
    values, order = torch.sort(draws, stable=True)  # equal ids: earliest draw first
    first = torch.ones(M, dtype=torch.bool, device=device)
    first[1:] = values[1:] != values[:-1]  # the first draw of each distinct id
    key = torch.where(first, order, torch.full_like(order, M))  # its draw index; M = a repeat
    picked_key, picked = torch.topk(key, num_samples, largest=False, sorted=False)  # (S,)
    ids, valid = values[picked], picked_key < M
    num_tries = (picked_key.max() + 1).clamp(max=M)
    # Sorted by id, a valid slot before a repeat of the same id (accidental hits find it first).
    rank = torch.sort(ids * 2 + (~valid).long()).indices
    return Candidates(ids[rank], num_tries, valid[rank])


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
                generator: Union[torch.Generator, Candidates, None] = None) -> torch.Tensor:
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

    def draw(self, generator: torch.Generator, device: Optional[torch.device] = None) -> Candidates:
        """This step's negatives (drawn on ``device``, default the generator's)."""
        return log_uniform_candidates(self.config.num_samples, self.vocab_size, generator, device=device)

    def sampled_loss(self, hidden: torch.Tensor, targets: torch.Tensor,
                     generator: Union[torch.Generator, Candidates, None] = None) -> torch.Tensor:
        """Fixed shapes and no read-back to the host: the step can run without a synchronisation.
        ``generator`` draws the negatives, or is the ``Candidates`` drawn already (``draw``: a
        compiled step gets them as an input)."""
        if generator is None:
            generator = torch.Generator(hidden.device).manual_seed(int(torch.randint(2**62, (1,))))
        V = self.vocab_size
        samples, num_tries, valid = generator if isinstance(generator, Candidates) else \
            self.draw(generator, hidden.device)  # (S,) sorted
        log_q_samples = torch.log(expected_count(samples, V, num_tries)).float()  # (S,)
        log_q_true = torch.log(expected_count(targets, V, num_tries)).float()  # (N,)
        # One gather for negatives and targets: each index op makes a dense (V, dim) gradient.
        # Column S is a spare that is never a negative (-inf): rows without an accidental hit mask
        # it instead, so the hits are removed by one in-place scatter of fixed shape.
        S = len(samples)
        index = torch.cat([samples, samples[:1], targets])
        rows = self.weight[index]  # (S + 1 + N, dim)
        bias = self.bias[index].float()  # (S + 1 + N,)
        usable = torch.cat([valid, valid.new_zeros(1)])  # (S + 1,)
        neg_bias = (bias[: S + 1] - torch.cat([log_q_samples, log_q_samples[:1]])).masked_fill(
            ~usable, float("-inf"))  # (S + 1,)
        sampled = torch.mm(hidden, rows[: S + 1].to(hidden.dtype).t()).float() + neg_bias  # (N, S + 1)
        true = (hidden.float() * rows[S + 1 :].float()).sum(-1) + bias[S + 1 :] - log_q_true  # (N,)
        # Accidental hits: a negative equal to the row's target is not a negative for that row.
        pos = torch.searchsorted(samples, targets).clamp_(max=S - 1).unsqueeze(1)  # (N, 1)
        hit = samples[pos] == targets.unsqueeze(1)  # (N, 1)
        sampled.scatter_(1, torch.where(hit, pos, S), float("-inf"))
        return torch.logaddexp(true, torch.logsumexp(sampled, dim=-1)) - true
