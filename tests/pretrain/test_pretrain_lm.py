import math

import numpy as np
import pytest
import torch

from pretrain.batches import WindowBatcher, pad_sentences
from pretrain.config import SoftmaxConfig
from pretrain.corpus import EncodedCorpus
from pretrain.lm import BidirectionalLM, evaluate, unigram_log_probs, unigram_perplexity
from pretrain.vocab import Vocabulary, WordTable
from pretrain_util import single_thread, tiny_model_config, toy_sentences  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def setup(kind="full", n=40):
    sentences = [s.split() for s in toy_sentences(n)]
    words = sorted({w for s in sentences for w in s})
    vocab = Vocabulary(["<S>", "</S>", "<UNK>"] + words[:-3])  # a few words are out of vocabulary
    table = WordTable(vocab)
    corpus = EncodedCorpus(table, [table.encode(s) for s in sentences])
    lm = BidirectionalLM(tiny_model_config(), len(vocab), SoftmaxConfig(kind=kind, num_samples=5))
    return lm, corpus, table, vocab


def test_dedup_char_cnn_equals_the_elmo_forward():
    lm, corpus, table, _ = setup()
    batch = WindowBatcher(corpus, table, batch_size=3, window=7, seed=0).next_batch()
    assert batch.token_chars.shape[0] < 21  # repeated tokens are encoded once
    outs, grads = [], []
    for dedup in (True, False):
        lm.dedup = dedup
        lm.zero_grad()
        out = lm(batch)
        (out.forward_loss_sum + out.backward_loss_sum).backward()
        outs.append(out)
        grads.append({k: p.grad.clone() for k, p in lm.named_parameters()})
    for a, b in zip(outs[0][:4], outs[1][:4]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-7)


def test_loss_is_the_top_layer_predicting_next_and_previous_token():
    lm, corpus, table, vocab = setup()
    batch = pad_sentences([corpus[0], corpus[1], corpus[2]], table)
    out = lm(batch)
    with torch.no_grad():
        top = lm.bilm(batch.char_ids(), add_boundaries=False).layers[-1]  # (B, T, 2P)
        P = top.shape[-1] // 2
        logp_f = lm.softmax.log_probs(top[..., :P])
        logp_b = lm.softmax.log_probs(top[..., P:])
    want_f = want_b = 0.0
    for r in range(3):
        words = ["<S>"] + [table.words[t] for t in corpus[r]] + ["</S>"]
        for t in range(len(words) - 1):  # position t predicts t+1 ...
            want_f -= float(logp_f[r, t, vocab.id(words[t + 1])])
        for t in range(1, len(words)):  # ... and t-1
            want_b -= float(logp_b[r, t, vocab.id(words[t - 1])])
    assert float(out.forward_loss_sum.detach()) == pytest.approx(want_f, rel=1e-5)
    assert float(out.backward_loss_sum.detach()) == pytest.approx(want_b, rel=1e-5)
    assert int(out.forward_count) == int(out.backward_count) == sum(len(corpus[r]) + 1 for r in range(3))


def test_each_direction_sees_only_its_own_side():
    lm, corpus, table, _ = setup()
    batch = pad_sentences([corpus[0]], table)
    base = lm.top_layer(batch)[0].detach()
    n, P = batch.tokens.shape[1], base.shape[-1] // 2
    other = corpus[5] if corpus[5][0] != corpus[0][0] else corpus[6]
    for pos, side in ((n - 2, "forward"), (1, "backward")):  # change one word
        tokens = corpus[0].copy()
        tokens[pos - 1] = other[0]
        changed = lm.top_layer(pad_sentences([tokens], table))[0].detach()
        diff = (changed - base).abs().amax(-1)[0]  # (T,) per position, both halves
        if side == "forward":
            fwd = (changed - base)[0, :, :P].abs().amax(-1)
            assert float(fwd[:pos].max()) == 0.0 and float(fwd[pos]) > 0
        else:
            bwd = (changed - base)[0, :, P:].abs().amax(-1)
            assert float(bwd[pos + 1 :].max()) == 0.0 and float(bwd[pos]) > 0
        assert float(diff.max()) > 0


def test_every_parameter_gets_a_finite_nonzero_gradient():
    for kind in ("sampled", "full", "adaptive"):
        lm, corpus, table, _ = setup(kind, n=200)
        batch = WindowBatcher(corpus, table, batch_size=8, window=10, seed=0).next_batch()
        out = lm(batch, generator=torch.Generator().manual_seed(0))
        (out.forward_loss_sum / out.forward_count + out.backward_loss_sum / out.backward_count).backward()
        for name, p in lm.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            if "adaptive.tail" not in name:  # tail clusters only get gradient from their words
                assert float(p.grad.abs().sum()) > 0, (kind, name)


def test_evaluate_and_unigram_perplexity_by_hand():
    lm, corpus, table, vocab = setup()
    batches = [pad_sentences([corpus[i] for i in range(k, k + 4)], table) for k in (0, 4)]
    res = evaluate(lm, batches)
    sums = [0.0, 0.0]
    count = 0
    for b in batches:
        with torch.no_grad():
            out = lm(b)
        sums[0] += float(out.forward_loss_sum)
        sums[1] += float(out.backward_loss_sum)
        count += int(out.forward_count)
    assert res["tokens"] == count
    assert res["forward_ppl"] == pytest.approx(math.exp(sums[0] / count), rel=1e-5)
    assert res["backward_ppl"] == pytest.approx(math.exp(sums[1] / count), rel=1e-5)
    counts = torch.arange(len(vocab), dtype=torch.float64)
    logp = unigram_log_probs(counts)
    assert float(logp.exp().sum()) == pytest.approx(1.0)
    assert float(logp[4]) == pytest.approx(math.log(5 / (counts.sum() + len(vocab))))
    uni = unigram_perplexity(logp, batches)
    targets = np.concatenate([b.forward_targets[b.forward_targets >= 0].numpy() for b in batches])
    assert uni["forward_ppl"] == pytest.approx(math.exp(-float(logp[targets].mean())), rel=1e-9)
