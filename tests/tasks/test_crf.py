"""CRF: forward algorithm and Viterbi against brute-force enumeration; constrained decoding."""

import itertools

import torch

from tasks.crf import ConditionalRandomField, constraint_scores, viterbi_decode
from tasks.tags import allowed_transitions, is_valid, scheme_labels


def brute_force(crf, emissions, length):
    """All K^n sequences of the first ``length`` positions: (log Z, best sequence)."""
    transitions, start, end = (x.detach() for x in crf._scores(-10000.0))
    K = emissions.shape[-1]
    scores = {}
    for seq in itertools.product(range(K), repeat=length):
        s = start[seq[0]] + end[seq[-1]] + sum(emissions[t, seq[t]] for t in range(length))
        s = s + sum(transitions[a, b] for a, b in zip(seq, seq[1:]))
        scores[seq] = s
    stacked = torch.stack(list(scores.values()))
    return torch.logsumexp(stacked, 0), max(scores, key=lambda k: float(scores[k]))


def test_forward_and_viterbi_equal_brute_force():
    torch.manual_seed(1)
    K, T = 3, 4
    crf = ConditionalRandomField(K).double()
    with torch.no_grad():
        crf.start_transitions.normal_(); crf.end_transitions.normal_()
    emissions = torch.randn(3, T, K, dtype=torch.float64)
    lengths = [4, 2, 1]
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    tags = torch.randint(0, K, (3, T))
    log_z = crf.log_partition(emissions, mask)
    ll = crf(emissions, tags, mask)
    paths = crf.decode(emissions, mask)
    for b, n in enumerate(lengths):
        z, best = brute_force(crf, emissions[b], n)
        assert torch.allclose(log_z[b], z, atol=1e-10)
        seq = tags[b, :n].tolist()
        transitions = crf.transitions
        score = (crf.start_transitions[seq[0]] + crf.end_transitions[seq[-1]]
                 + sum(emissions[b, t, seq[t]] for t in range(n))
                 + sum(transitions[i, j] for i, j in zip(seq, seq[1:])))
        assert torch.allclose(ll[b], score - z, atol=1e-10)
        assert paths[b] == list(best)


def test_constrained_forward_equals_brute_force_and_gradients():
    labels = scheme_labels(["A"], "bioul")  # O B-A I-A L-A U-A
    crf = ConditionalRandomField(len(labels), allowed_transitions(labels, "bioul")).double()
    emissions = torch.randn(1, 3, len(labels), dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 3, dtype=torch.bool)
    z, best = brute_force(crf, emissions[0].detach(), 3)
    assert torch.allclose(crf.log_partition(emissions, mask)[0], z, atol=1e-9)
    assert is_valid([labels[k] for k in best], "bioul")
    tags = torch.tensor([[1, 3, 0]])  # B-A L-A O
    loss = -crf(emissions, tags, mask).sum()
    loss.backward()
    for p in [emissions, *crf.parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    # the gradient of the log-likelihood w.r.t. emissions is one-hot(gold) - marginals: rows sum to 0
    assert torch.allclose(emissions.grad.sum(-1), torch.zeros(1, 3, dtype=torch.float64), atol=1e-9)


def test_constrained_decoding_never_emits_invalid_sequences():
    torch.manual_seed(0)
    for scheme in ("bio", "bioul", "iob1"):
        labels = scheme_labels(["A", "B", "C"], scheme)
        constraints = allowed_transitions(labels, scheme)
        crf = ConditionalRandomField(len(labels), constraints)
        with torch.no_grad():  # scores that strongly prefer forbidden moves
            crf.transitions.copy_(torch.where(constraints.allowed, -5.0, 5.0))
        emissions = 10 * torch.randn(64, 9, len(labels))
        lengths = torch.randint(1, 10, (64,))
        mask = torch.arange(9).unsqueeze(0) < lengths.unsqueeze(1)
        for n, path in zip(lengths.tolist(), crf.decode(emissions, mask)):
            assert len(path) == n and is_valid([labels[k] for k in path], scheme)
        # constraint-only decoding (the SRL tagger's): also always valid
        trans, start, end = constraint_scores(constraints)
        for n, path in zip(lengths.tolist(), viterbi_decode(emissions.log_softmax(-1), mask, trans, start, end)):
            assert len(path) == n and is_valid([labels[k] for k in path], scheme)


def test_unconstrained_viterbi_picks_emission_argmax_without_transitions():
    emissions = torch.randn(2, 5, 4)
    mask = torch.ones(2, 5, dtype=torch.bool)
    zeros = torch.zeros(4)
    paths = viterbi_decode(emissions, mask, torch.zeros(4, 4), zeros, zeros)
    assert paths == emissions.argmax(-1).tolist()
