import math

import numpy as np
import pytest
import torch

from pretrain.config import SoftmaxConfig
from pretrain.softmax import (LMSoftmax, draws_for, expected_count, log_uniform_candidates,
                              log_uniform_probability)


def test_log_uniform_distribution_sums_to_one_and_prefers_frequent_ids():
    p = log_uniform_probability(torch.arange(1000), 1000)
    assert abs(float(p.sum()) - 1.0) < 1e-12
    assert float(p[0]) == pytest.approx(math.log(2) / math.log(1001))
    assert bool((p[:-1] > p[1:]).all())


def test_candidates_are_unique_sorted_and_reproducible():
    s, tries, valid = log_uniform_candidates(100, 5000, torch.Generator().manual_seed(3))
    assert len(s) == 100 and len(set(s.tolist())) == 100 and bool((s[1:] > s[:-1]).all())
    assert bool(valid.all()) and tries.dim() == 0
    assert 100 <= int(tries) <= draws_for(100, 5000) and 0 <= int(s.min()) and int(s.max()) < 5000
    s2, tries2, _ = log_uniform_candidates(100, 5000, torch.Generator().manual_seed(3))
    assert torch.equal(s, s2) and int(tries) == int(tries2)
    # Asking for nearly the whole vocabulary stops after max_draws with fewer ids, no endless loop:
    # the shape stays (S,), the missing slots repeat an id and are marked invalid.
    s3, tries3, valid3 = log_uniform_candidates(990, 1000, torch.Generator().manual_seed(0), max_draws=4000)
    assert int(tries3) == 4000 and len(s3) == 990 and 0 < int(valid3.sum()) < 990
    assert len(set(s3[valid3].tolist())) == int(valid3.sum())
    assert set(s3[~valid3].tolist()) <= set(s3[valid3].tolist())


def test_candidates_are_the_first_distinct_ids_of_the_draws():
    """Same ids and num_tries as drawing one at a time until S distinct ids have appeared."""
    V, S = 300, 40
    M = draws_for(S, V)
    u = torch.rand(M, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    draws = ((torch.exp(u * math.log(V + 1)).long() - 1).clamp(0, V - 1)).tolist()
    seen = []
    for n, k in enumerate(draws):
        if k not in seen:
            seen.append(k)
        if len(seen) == S:
            break
    ids, tries, valid = log_uniform_candidates(S, V, torch.Generator().manual_seed(5))
    assert ids.tolist() == sorted(seen) and int(tries) == n + 1 and bool(valid.all())
    # The fixed number of draws leaves a margin: S distinct ids take fewer draws on average.
    assert M > S and float(-torch.expm1(M * torch.log1p(-log_uniform_probability(torch.arange(V), V))).sum()) > S


def test_expected_count_matches_the_sampler():
    """The correction log Q(k) must be the log of how often k really is among the candidates."""
    V, S, reps = 40, 8, 3000
    g = torch.Generator().manual_seed(0)
    hits, expected = torch.zeros(V), torch.zeros(V, dtype=torch.float64)
    for _ in range(reps):
        s, tries, valid = log_uniform_candidates(S, V, g)
        assert bool(valid.all())
        hits[s] += 1
        expected += expected_count(torch.arange(V), V, tries)
    freq, expected = hits / reps, (expected / reps).float()
    assert float((freq - expected).abs().max()) < 0.05
    assert float(freq.sum()) == pytest.approx(S)


def reference_sampled_loss(h, w, b, targets, samples, tries, V):
    """numpy: softmax over [true, negatives] with log-expected-count correction, hits removed."""
    h, w, b = h.double().numpy(), w.double().numpy(), b.double().numpy()
    samples = samples.numpy()
    logq = lambda ids: np.log(expected_count(torch.as_tensor(ids), V, tries).numpy())  # noqa: E731
    out = []
    for i, t in enumerate(targets.tolist()):
        true = h[i] @ w[t] + b[t] - logq([t])[0]
        neg = np.array([h[i] @ w[k] + b[k] for k in samples]) - logq(samples)
        neg = neg[samples != t]  # the accidental hit is not a negative
        logits = np.concatenate([[true], neg])
        out.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - true)
    return np.array(out)


def test_sampled_loss_by_hand_including_accidental_hits():
    V, dim, S = 30, 4, 6
    sm = LMSoftmax(dim, V, SoftmaxConfig(kind="sampled", num_samples=S)).train()
    with torch.no_grad():
        sm.bias.normal_()
    samples, tries, _ = log_uniform_candidates(S, V, torch.Generator().manual_seed(11))
    targets = torch.tensor([int(samples[0]), int(samples[3]), 29, 17, int(samples[0])])  # 3 hits
    h = torch.randn(5, dim)
    got = sm(h, targets, torch.Generator().manual_seed(11))
    want = reference_sampled_loss(h, sm.weight.detach(), sm.bias.detach(), targets, samples, tries, V)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-5, atol=1e-5)


def test_sampled_softmax_never_forms_full_vocabulary_logits(monkeypatch):
    V, dim, S, N = 200_000, 8, 64, 50
    sm = LMSoftmax(dim, V, SoftmaxConfig(kind="sampled", num_samples=S)).train()

    def no_full_logits(*args, **kwargs):
        raise AssertionError("full-vocabulary logits were computed")

    monkeypatch.setattr(torch.nn.functional, "linear", no_full_logits)
    h = torch.randn(N, dim, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    loss = sm(h, targets, torch.Generator().manual_seed(0)).mean()
    loss.backward()
    touched = set(sm.weight.grad.abs().sum(1).nonzero().squeeze(1).tolist())
    samples, _, _ = log_uniform_candidates(S, V, torch.Generator().manual_seed(0))
    assert touched <= set(samples.tolist()) | set(targets.tolist())
    assert len(touched) > S  # the negatives and the targets got gradient


def test_small_vocabulary_falls_back_to_the_exact_softmax():
    sm = LMSoftmax(4, 10, SoftmaxConfig(kind="sampled", num_samples=8192)).train()
    assert sm.kind == "full"
    h, t = torch.randn(7, 4), torch.randint(0, 10, (7,))
    want = torch.nn.functional.cross_entropy(h @ sm.weight.t() + sm.bias, t, reduction="none")
    torch.testing.assert_close(sm(h, t), want)


def test_evaluation_uses_the_full_softmax_in_chunks():
    V, dim = 1 << 21, 2  # 8 rows per 16M-logit chunk -> 3 chunks for 20 rows
    sm = LMSoftmax(dim, V, SoftmaxConfig(kind="sampled", num_samples=16)).eval()
    h, t = torch.randn(20, dim), torch.randint(0, V, (20,))
    with torch.no_grad():
        got = sm(h, t)
        want = torch.nn.functional.cross_entropy(h @ sm.weight.t() + sm.bias, t, reduction="none")
    torch.testing.assert_close(got, want)


def test_adaptive_softmax_is_a_normalised_distribution():
    sm = LMSoftmax(16, 50, SoftmaxConfig(kind="adaptive", adaptive_cutoffs=[10, 30]))
    h, t = torch.randn(6, 16), torch.randint(0, 50, (6,))
    logp = sm.log_probs(h)
    torch.testing.assert_close(torch.logsumexp(logp, -1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(sm(h, t), -logp[torch.arange(6), t], atol=1e-5, rtol=1e-5)
    tiny = LMSoftmax(16, 5, SoftmaxConfig(kind="adaptive"))  # cutoffs above the vocabulary size
    assert torch.isfinite(tiny(h, t % 5)).all()


def test_invalid_candidate_slots_are_not_negatives():
    """Slots marked invalid (a repeated id: too few distinct draws) change nothing; nor does the
    spare column that rows without an accidental hit mask."""
    from pretrain.softmax import Candidates

    V, dim = 30, 4
    sm = LMSoftmax(dim, V, SoftmaxConfig(kind="sampled", num_samples=5)).train()
    with torch.no_grad():
        sm.bias.normal_()
    h, targets = torch.randn(6, dim), torch.tensor([3, 7, 3, 29, 1, 8])
    tries = torch.tensor(40)
    short = Candidates(torch.tensor([1, 3, 8]), tries, torch.tensor([True, True, True]))
    padded = Candidates(torch.tensor([1, 3, 3, 8, 8]), tries, torch.tensor([True, True, False, True, False]))
    want = reference_sampled_loss(h, sm.weight.detach(), sm.bias.detach(), targets, short.ids, tries, V)
    np.testing.assert_allclose(sm(h, targets, short).detach().numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sm(h, targets, padded).detach().numpy(), want, rtol=1e-5, atol=1e-5)
