"""Linear-chain conditional random field (Lafferty et al. 2001; Lample et al. 2016 for taggers).

The score of tags y_1..y_n for emissions e (n, K) is

    start[y_1] + sum_t e[t, y_t] + sum_{t>1} trans[y_{t-1}, y_t] + end[y_n]

and log p(y) = score(y) - log Z with Z summed over all K^n sequences by the forward algorithm.
Constraints (tasks.tags.allowed_transitions) forbid transitions that would make an ill-formed
tag sequence: training adds a large negative constant to them (finite, so gradients stay
clean), decoding gives them -inf, so Viterbi never emits a forbidden sequence.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from tasks.tags import Transitions

FORBIDDEN = -10000.0


def viterbi_decode(emissions: torch.Tensor, mask: torch.Tensor, transitions: torch.Tensor,
                   start: torch.Tensor, end: torch.Tensor) -> list[list[int]]:
    """Best tag sequence of every row.

    emissions (B, T, K), mask (B, T) bool with each row's tokens first, transitions (K, K) with
    [i, j] the score of tag j after tag i, start/end (K,). Returns B lists of their row's length.
    """
    B, T, K = emissions.shape
    lengths = mask.long().sum(-1).tolist()
    if T == 0:
        return [[] for _ in range(B)]
    score = start.unsqueeze(0) + emissions[:, 0]  # (B, K)
    backpointers = []
    for t in range(1, T):
        candidates = score.unsqueeze(2) + transitions.unsqueeze(0)  # (B, K prev, K next)
        best, best_prev = candidates.max(dim=1)  # (B, K)
        new_score = best + emissions[:, t]
        score = torch.where(mask[:, t].unsqueeze(1), new_score, score)
        backpointers.append(best_prev)
    score = score + end.unsqueeze(0)
    last = score.argmax(dim=-1).tolist()  # (B,)
    pointers = torch.stack(backpointers, dim=1).tolist() if backpointers else [[] for _ in range(B)]
    paths = []
    for b in range(B):
        n = lengths[b]
        if n == 0:
            paths.append([])
            continue
        path = [last[b]]
        for t in range(n - 2, -1, -1):  # pointers[b][t] maps the tag at t+1 to the best at t
            path.append(pointers[b][t][path[-1]])
        paths.append(path[::-1])
    return paths


class ConditionalRandomField(nn.Module):
    """CRF over ``num_tags`` tags with learned transition, start and end scores."""

    def __init__(self, num_tags: int, constraints: Optional[Transitions] = None) -> None:
        super().__init__()
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        self.start_transitions = nn.Parameter(torch.zeros(num_tags))
        self.end_transitions = nn.Parameter(torch.zeros(num_tags))
        nn.init.xavier_normal_(self.transitions)
        if constraints is None:
            allowed = torch.ones(num_tags, num_tags, dtype=torch.bool)
            constraints = Transitions(allowed, allowed[0].clone(), allowed[0].clone())
        if constraints.allowed.shape != (num_tags, num_tags):
            raise ValueError(f"constraints are for {constraints.allowed.shape[0]} tags, the CRF has {num_tags}")
        self.register_buffer("allowed", constraints.allowed.clone())
        self.register_buffer("allowed_start", constraints.start.clone())
        self.register_buffer("allowed_end", constraints.end.clone())

    def _scores(self, forbidden: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = torch.tensor(forbidden, dtype=self.transitions.dtype, device=self.transitions.device)
        return (torch.where(self.allowed, self.transitions, f),
                torch.where(self.allowed_start, self.start_transitions, f),
                torch.where(self.allowed_end, self.end_transitions, f))

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log Z of every row (B,) by the forward algorithm; emissions (B, T, K), mask (B, T)."""
        transitions, start, end = self._scores(FORBIDDEN)
        trans = transitions.unsqueeze(0)  # (1, K, K)
        # unbind once: indexing emissions[:, t] in the loop would make the backward pass build a
        # zero-filled (B, T, K) gradient for every step
        steps, running = emissions.unbind(1), mask.unbind(1)
        alpha = start.unsqueeze(0) + steps[0]  # (B, K)
        for t in range(1, len(steps)):
            # alpha'[j] = logsumexp_i(alpha[i] + trans[i, j]) + e[t, j]
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans, dim=1) + steps[t]
            alpha = torch.where(running[t].unsqueeze(1), nxt, alpha)
        return torch.logsumexp(alpha + end.unsqueeze(0), dim=-1)

    def sequence_score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised score of the given tags (B, T) for every row (B,)."""
        transitions, start, end = self._scores(FORBIDDEN)
        m = mask.to(emissions.dtype)  # (B, T)
        emit = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B, T)
        score = start[tags[:, 0]] + (emit * m).sum(-1)
        if tags.shape[1] > 1:
            trans = transitions[tags[:, :-1], tags[:, 1:]]  # (B, T-1)
            score = score + (trans * m[:, 1:]).sum(-1)
        last = tags.gather(1, (mask.long().sum(-1) - 1).clamp(min=0).unsqueeze(1)).squeeze(1)  # (B,)
        return score + end[last]

    def forward(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p(tags | emissions) of every row (B,). Every row needs at least one token."""
        if not bool(mask[:, 0].all()):
            raise ValueError("every sequence given to the CRF needs at least one token (mask[:, 0] all True)")
        return self.sequence_score(emissions, tags, mask) - self.log_partition(emissions, mask)

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Constrained Viterbi: the best allowed tag sequence of every row."""
        transitions, start, end = self._scores(float("-inf"))
        return viterbi_decode(emissions.detach(), mask, transitions.detach(), start.detach(), end.detach())


def constraint_scores(constraints: Transitions, dtype: torch.dtype = torch.float32
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Transition/start/end scores of 0 where allowed and -inf elsewhere (decoding without a CRF)."""
    def to_scores(allowed: torch.Tensor) -> torch.Tensor:
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, float("-inf"))

    return to_scores(constraints.allowed), to_scores(constraints.start), to_scores(constraints.end)
