import pytest
import torch

from pretrain.batches import SentenceBatcher, WindowBatcher, eval_batches
from pretrain.corpus import EncodedCorpus
from pretrain.lm import BidirectionalLM, evaluate, unigram_log_probs, unigram_perplexity
from pretrain.train import Trainer, lr_factor
from pretrain.vocab import BOS_ID, EOS_ID, Vocabulary, WordTable
from pretrain_util import single_thread, tiny_pretrain_config, toy_sentences  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def make_data(lines):
    sentences = [s.split() for s in lines]
    counts = {}
    for s in sentences:
        for w in s:
            counts[w] = counts.get(w, 0) + 1
    from collections import Counter

    vocab = Vocabulary.from_counts(Counter(counts))
    table = WordTable(vocab)
    return EncodedCorpus(table, [table.encode(s) for s in sentences]), table, vocab


def make_trainer(config, corpus, table, vocab, steps, heldout=None):
    torch.manual_seed(config.train.seed)
    lm = BidirectionalLM(config.model, len(vocab), config.softmax)
    d = config.data
    if d.batch_mode == "window":
        batcher = WindowBatcher(corpus, table, d.batch_size, d.window, config.train.seed)
    else:
        batcher = SentenceBatcher(corpus, table, d.batch_size, d.max_sentence_tokens, config.train.seed)
    return Trainer(lm, batcher, config, steps, heldout=heldout)


def train_losses(trainer, steps):
    return [trainer.train_step(trainer.batcher.next_batch())["loss"] for _ in range(steps)]


def test_loss_decreases_on_a_small_corpus():
    corpus, table, vocab = make_data(toy_sentences(200))
    config = tiny_pretrain_config(data={"batch_size": 8, "window": 10},
                                  optim={"optimizer": "adam", "lr": 0.01, "dropout": 0.0})
    losses = train_losses(make_trainer(config, corpus, table, vocab, 60), 60)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.5, (first, last)


def test_a_repeated_sentence_is_learned_to_perplexity_near_one():
    line = "the quick brown fox jumps over the lazy dog ."
    corpus, table, vocab = make_data([line] * 16)
    config = tiny_pretrain_config(data={"batch_mode": "sentence", "batch_size": 8},
                                  softmax={"kind": "full"},
                                  optim={"optimizer": "adam", "lr": 0.03, "dropout": 0.0})
    held = eval_batches(corpus, table, 8, 50, None)[:1]
    trainer = make_trainer(config, corpus, table, vocab, 150, held)
    start = evaluate(trainer.lm, held)
    train_losses(trainer, 150)
    end = evaluate(trainer.lm, held)
    assert start["forward_ppl"] > 8
    assert end["forward_ppl"] < 1.2 and end["backward_ppl"] < 1.2, end


def test_sampled_softmax_reaches_the_full_softmax_perplexity():
    corpus, table, vocab = make_data(toy_sentences(400, seed=1))
    held_corpus, _, _ = make_data(toy_sentences(60, seed=2))
    held_corpus = EncodedCorpus(table, [table.encode([held_corpus.table.words[t] for t in held_corpus[i]])
                                        for i in range(len(held_corpus))])
    held = eval_batches(held_corpus, table, 32, 50, None)
    assert len(vocab) > 20
    ppl = {}
    for kind in ("full", "sampled"):
        config = tiny_pretrain_config(data={"batch_size": 16, "batch_mode": "sentence"},
                                      softmax={"kind": kind, "num_samples": 12},
                                      optim={"optimizer": "adam", "lr": 0.01, "dropout": 0.0})
        trainer = make_trainer(config, corpus, table, vocab, 320)
        assert trainer.lm.softmax.kind == kind
        train_losses(trainer, 320)
        result = evaluate(trainer.lm, held)
        ppl[kind] = (result["forward_ppl"] + result["backward_ppl"]) / 2
    counts = torch.zeros(len(vocab), dtype=torch.float64)
    for i in range(len(corpus)):
        counts += torch.bincount(torch.from_numpy(table.targets[corpus[i]]), minlength=len(vocab))
    counts[BOS_ID] += len(corpus)
    counts[EOS_ID] += len(corpus)
    unigram = unigram_perplexity(unigram_log_probs(counts), held)["forward_ppl"]
    # 12 negatives of a 26-word vocabulary; the grammar's own perplexity is about 2.
    assert ppl["full"] < 0.15 * unigram, (ppl, unigram)
    assert abs(ppl["sampled"] - ppl["full"]) < 0.1 * ppl["full"], (ppl, unigram)


def test_learning_rate_schedules():
    from pretrain.config import OptimConfig

    c = OptimConfig(warmup_steps=4, schedule="linear", min_lr_ratio=0.1)
    assert [lr_factor(s, c, 14) for s in (0, 3)] == [0.25, 1.0]
    assert lr_factor(4, c, 14) == 1.0 and lr_factor(9, c, 14) == pytest.approx(0.55)
    assert lr_factor(14, c, 14) == pytest.approx(0.1) and lr_factor(99, c, 14) == pytest.approx(0.1)
    c = OptimConfig(schedule="cosine")
    assert lr_factor(5, c, 10) == pytest.approx(0.5) and lr_factor(10, c, 10) == pytest.approx(0.0)
    assert lr_factor(7, OptimConfig(), 10) == 1.0


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
@pytest.mark.parametrize("clip", [{"clip_value": 1e-4, "clip_norm": None},
                                  {"clip_value": None, "clip_norm": 1e-3}])
def test_gradient_clipping(clip):
    corpus, table, vocab = make_data(toy_sentences(50))
    config = tiny_pretrain_config(optim=clip)
    trainer = make_trainer(config, corpus, table, vocab, 2)
    seen = {}
    step = trainer.optimizer.step

    def inspect(*args, **kwargs):
        grads = [p.grad for p in trainer.lm.parameters() if p.grad is not None]
        seen["max"] = max(float(g.abs().max()) for g in grads)
        seen["norm"] = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        return step(*args, **kwargs)

    trainer.optimizer.step = inspect
    metrics = trainer.train_step(trainer.batcher.next_batch())
    if clip["clip_value"]:
        assert seen["max"] <= 1e-4 + 1e-12
    else:
        assert seen["norm"] == pytest.approx(1e-3, rel=1e-4) and metrics["grad_norm"] > 1e-3


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_on_cpu(precision):
    corpus, table, vocab = make_data(toy_sentences(50))
    losses = {}
    for p in ("fp32", precision):
        config = tiny_pretrain_config(train={"precision": p}, optim={"dropout": 0.0})
        trainer = make_trainer(config, corpus, table, vocab, 3)
        losses[p] = train_losses(trainer, 3)
        assert trainer.scaler.is_enabled() == (p == "fp16")
    assert all(torch.isfinite(torch.tensor(losses[precision])))
    assert losses[precision][0] == pytest.approx(losses["fp32"][0], rel=0.02)
