"""Kim et al. 2016's training recipe: the plateau schedule, SGD, the PTB presets, forward-only
training, the identity LSTM projection, the contiguous window order."""

import json
import os
from collections import Counter

import pytest
import torch

from elmo.lstm import FORGET_BIAS
from pretrain.batches import WindowBatcher, eval_batches
from pretrain.config import PretrainConfig, pretrain_preset
from pretrain.corpus import EncodedCorpus
from pretrain.lm import BidirectionalLM
from pretrain.recipe import Plateau, count_parameters, fix_identity_projection, init_uniform
from pretrain.run import run
from pretrain.train import Trainer
from pretrain.vocab import Vocabulary, WordTable
from pretrain_util import (ListBatcher, single_thread, tiny_pretrain_config, toy_sentences,  # noqa: F401
                           write_lines)

pytestmark = pytest.mark.usefixtures("single_thread")


def make_data(lines):
    sentences = [s.split() for s in lines]
    vocab = Vocabulary.from_counts(Counter(w for s in sentences for w in s))
    table = WordTable(vocab)
    return EncodedCorpus(table, [table.encode(s) for s in sentences]), table, vocab


# -- the plateau schedule ---------------------------------------------------------------------------
def test_plateau_halves_exactly_when_the_improvement_is_below_the_threshold():
    plateau = Plateau(threshold=1.0, factor=0.5)
    perplexities = [300.0, 200.0, 199.5, 150.0, 149.0, 148.2, 160.0, 100.0, 99.0001]
    halved = [plateau.update(p) for p in perplexities]
    # 300 -> 200: -100 (keep); -> 199.5: only 0.5 better (halve); -> 150 (keep); -> 149: exactly 1
    # better, not less (keep); -> 148.2: 0.8 (halve); -> 160: worse (halve); -> 100 (keep);
    # -> 99.0001: 0.9999 (halve). The first value only sets the reference.
    assert halved == [False, False, True, False, False, True, True, False, True]
    assert [s for _, s in plateau.history] == [1, 1, .5, .5, .5, .25, .125, .125, .0625]
    restored = Plateau(1.0, 0.5)
    restored.load_state_dict(json.loads(json.dumps(plateau.state_dict())))
    assert restored.update(98.5) is True and restored.scale == 0.03125  # 99.0001 - 98.5 < 1


class _Perplexities:
    """A held-out "evaluation" that returns a fixed sequence of perplexities."""

    def __init__(self, values):
        self.values, self.calls = list(values), 0

    def __call__(self, lm):
        ppl = self.values[self.calls]
        self.calls += 1
        return {"forward_loss": 0.0, "backward_loss": 0.0, "forward_ppl": ppl, "backward_ppl": ppl,
                "tokens": 1}


def test_the_trainer_halves_the_rate_after_the_epoch_whose_perplexity_stalled():
    corpus, table, vocab = make_data(toy_sentences(40))
    config = tiny_pretrain_config(
        softmax={"kind": "full"},
        optim={"optimizer": "sgd", "lr": 0.8, "schedule": "plateau", "dropout": 0.0},
        train={"max_steps": 10, "eval_per_epoch": True, "eval_at_start": False,
               "checkpoint_every": 100, "eval_every": 100, "log_every": 1})
    config.check()
    lm = BidirectionalLM(config.model, len(vocab), config.softmax)
    batcher = WindowBatcher(corpus, table, 4, 6, 0)
    # Epochs of 2 steps end at steps 2, 4, 6, 8 (10 is the end of training: run.py evaluates it).
    heldout = _Perplexities([500.0, 400.0, 399.5, 398.0])
    rates = {}
    trainer = Trainer(lm, batcher, config, 10, heldout=heldout, steps_per_epoch=2,
                      callback=lambda t, m: rates.__setitem__(m["step"], m["lr"]))
    trainer.fit()
    assert heldout.calls == 4
    # The rate of step s is the one its update used; the halving after step 6 (399.5 is only
    # 0.5 better than 400) applies from step 7 on; 398 after step 8 is 1.5 better: kept.
    assert [rates[s] for s in range(1, 11)] == pytest.approx([0.8] * 6 + [0.4] * 4)
    assert trainer.plateau.scale == 0.5


# -- SGD with the paper's settings ------------------------------------------------------------------
def _papers_settings(model: dict, identity_projection: bool) -> dict:
    config = pretrain_preset("ptb-char-small").to_dict()
    config["model"] = model
    config["optim"]["identity_projection"] = identity_projection
    return config


def test_sgd_with_the_papers_settings_trains_a_small_plain_lstm(tmp_path):
    """The whole ptb-char-small recipe (SGD 1.0, plateau, init, dropout placement, forward LM,
    contiguous windows of 20 x 35, stream evaluation) on a 2 x 32 plain LSTM: seconds."""
    corpus = write_lines(str(tmp_path / "train.txt"), toy_sentences(2000))  # 20 steps per epoch
    held = write_lines(str(tmp_path / "valid.txt"), toy_sentences(30, seed=1))
    model = tiny_pretrain_config().model.to_dict()
    model["bilm"].update({"dim": 32, "projection_dim": 32, "cell_clip": None, "proj_clip": None,
                          "use_skip_connections": False})
    config = _papers_settings(model, True)
    config["train"].update({"epochs": None, "max_steps": 100, "progress": False, "log_every": 10,
                            "checkpoint_every": 1000})
    out = str(tmp_path / "run")
    run(PretrainConfig.from_dict(config), [corpus], out, heldout=[held])
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    losses = [r["loss_mean"] for r in records if "loss_mean" in r]
    # From log(30) (30 softmax entries) to below the unigram level at lr 1.0 and dropout 0.5.
    assert len(losses) == 10 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.25, losses
    assert max(losses[-3:]) < min(losses[:3]), losses
    held_ppl = [r["heldout_forward_ppl"] for r in records if "heldout_forward_ppl" in r]
    assert held_ppl[-1] < 0.85 * held_ppl[0], held_ppl


@pytest.mark.slow
def test_sgd_with_the_papers_settings_trains_the_tiny_preset(tmp_path):
    corpus = write_lines(str(tmp_path / "train.txt"), toy_sentences(400))
    held = write_lines(str(tmp_path / "valid.txt"), toy_sentences(40, seed=1))
    config = _papers_settings(pretrain_preset("tiny").model.to_dict(), False)  # 512/64: projected
    config["train"].update({"epochs": None, "max_steps": 60, "progress": False, "log_every": 5,
                            "eval_at_start": True, "checkpoint_every": 100})
    config = PretrainConfig.from_dict(config)
    assert (config.optim.optimizer, config.optim.lr, config.optim.clip_norm, config.optim.dropout,
            config.optim.init_range, config.data.window, config.data.batch_size) == \
        ("sgd", 1.0, 5.0, 0.5, 0.05, 35, 20)
    out = str(tmp_path / "run")
    summary = run(config, [corpus], out, heldout=[held])
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    losses = [r["loss_mean"] for r in records if "loss_mean" in r]
    # From about log(30) (30 softmax entries) at lr 1.0: noisy at first (epochs of 4 steps,
    # dropout 0.5), then lower: the last 20 steps' mean well below the first 20 steps'.
    assert len(losses) == 12, losses
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.3, losses
    held_ppl = [r["heldout_forward_ppl"] for r in records if "heldout_forward_ppl" in r]
    assert held_ppl[-1] < 0.8 * held_ppl[0], held_ppl
    assert summary["heldout"]["forward_perplexity"] == pytest.approx(held_ppl[-1])
    rates = [r["lr_next"] for r in records if "lr_next" in r]  # the plateau rule acted
    assert rates and rates[-1] < 1.0 and all(b <= a for a, b in zip(rates, rates[1:])), rates


# -- the presets ------------------------------------------------------------------------------------
def test_the_ptb_presets_carry_the_papers_hyper_parameters():
    small, large = pretrain_preset("ptb-char-small"), pretrain_preset("ptb-char-large")
    assert small.model.char_cnn.filters == [[w, 25 * w] for w in range(1, 7)]
    assert small.model.char_cnn.n_filters == 525 and large.model.char_cnn.n_filters == 1100
    assert large.model.char_cnn.filters == [[1, 50], [2, 100], [3, 150], [4, 200], [5, 200],
                                            [6, 200], [7, 200]]
    assert (small.model.char_cnn.n_highway, large.model.char_cnn.n_highway) == (1, 2)
    assert small.model.char_cnn.embedding_dim == large.model.char_cnn.embedding_dim == 15
    for preset, dim in ((small, 300), (large, 650)):
        b = preset.model.bilm
        assert (b.dim, b.projection_dim, b.n_layers, b.cell_clip, b.proj_clip, b.use_skip_connections) == \
            (dim, dim, 2, None, None, False)
        assert preset.train.epochs == 25 and preset.train.directions == "forward"
        assert preset.softmax.kind == "full" and preset.optim.schedule == "plateau"
        preset.check()
    # Kim et al. Table 3: 5M parameters (small), 19M (large), with PTB's 10k-word softmax.
    torch.manual_seed(0)
    lm = BidirectionalLM(small.model, 10_001, small.softmax)
    frozen = fix_identity_projection(lm.bilm)
    assert frozen == 4 * 300 * 300  # both directions' layers keep a (frozen) identity
    # By hand: char embeddings 262 x 15; convolutions 15 * sum(width * count) + biases; highway
    # layers d x 2d + 2d; LSTM layers W_x, W_h and one bias (the first reads the highway output:
    # no character projection); softmax 10,001 x (dim + 1).
    def expected(filters, n_highway, H):
        d = sum(c for _, c in filters)
        conv = 15 * sum(w * c for w, c in filters) + d
        lstm = (d * 4 * H + H * 4 * H + 4 * H) + (H * 4 * H + H * 4 * H + 4 * H)
        return 262 * 15 + conv + n_highway * (d * 2 * d + 2 * d) + lstm + 10_001 * (H + 1)
    assert count_parameters(lm, "forward") == expected(small.model.char_cnn.filters, 1, 300) == 5_313_581
    big = BidirectionalLM(large.model, 10_001, large.softmax)
    fix_identity_projection(big.bilm)
    assert count_parameters(big, "forward") == expected(large.model.char_cnn.filters, 2, 650) == 19_371_781
    # Kim et al. sec. 2.2-2.3: tanh convolutions, relu highway layers, no projection before the LSTM.
    for preset in (small, large):
        assert preset.model.char_cnn.activation == "tanh" and preset.model.char_cnn.projection is False
        assert lm.bilm.char_cnn.output_dim == 525 and big.bilm.char_cnn.output_dim == 1100


def test_cross_section_rules_are_checked():
    config = pretrain_preset("ptb-char-small")
    config.train.eval_per_epoch = False
    with pytest.raises(ValueError, match="eval_per_epoch"):
        config.check()
    config = tiny_pretrain_config(optim={"identity_projection": True})  # 16 / 8: not square
    with pytest.raises(ValueError, match="identity_projection needs"):
        config.check()


# -- the pieces of the model ------------------------------------------------------------------------
def test_the_forward_lm_is_the_forward_half_of_the_bilm():
    corpus, table, vocab = make_data(toy_sentences(30))
    config = tiny_pretrain_config(softmax={"kind": "full"})
    torch.manual_seed(0)
    bi = BidirectionalLM(config.model, len(vocab), config.softmax).double()
    fwd = BidirectionalLM(config.model, len(vocab), config.softmax).double()
    fwd.load_state_dict(bi.state_dict())
    batch = eval_batches(corpus, table, 8, 50)[0]  # padded rows of different lengths
    a, b = bi(batch), fwd(batch, directions="forward")
    assert float(b.forward_loss_sum.detach()) == pytest.approx(float(a.forward_loss_sum.detach()), rel=1e-12)
    assert int(b.forward_count) == int(a.forward_count) and int(b.backward_count) == 0
    a.forward_loss_sum.backward()
    b.forward_loss_sum.backward()
    for (name, p), q in zip(bi.named_parameters(), fwd.parameters()):
        if ".backward_layers." in name:
            assert q.grad is None
        elif p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)
    # The backward stack, run on its own, is the biLM's backward half too.
    with torch.no_grad():
        top, _ = bi.top_layer(batch)
        back, _ = bi.top_layer(batch, directions="backward")
    torch.testing.assert_close(back, top[..., top.shape[-1] // 2:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["full", "adaptive"])
@pytest.mark.parametrize("mode", ["window", "sentence"])
def test_a_forward_only_float32_step_is_bit_for_bit_the_bilms_forward_half(kind, mode):
    """directions="forward" computes exactly the numbers of the forward half of the biLM (float32,
    not to rounding): loss, every gradient, the forward state; the backward stack gets none."""
    corpus, table, vocab = make_data(toy_sentences(60))
    config = tiny_pretrain_config(softmax={"kind": kind, "adaptive_cutoffs": [10]})
    torch.manual_seed(0)
    lm = BidirectionalLM(config.model, len(vocab), config.softmax).train()
    if mode == "window":  # full rows (no lengths read back), state carried in
        batch, full_rows = WindowBatcher(corpus, table, 4, 7, 0).next_batch(), True
    else:  # padded rows of different lengths, sorted by length inside the biLM
        batch, full_rows = eval_batches(corpus, table, 8, 50)[0], False
    state = [tuple(tuple(torch.randn_like(x) for x in st) for st in pair)
             for pair in lm.bilm.bilm.default_state(batch.tokens.shape[0])]
    runs = {}
    for directions in ("both", "forward"):
        lm.zero_grad(set_to_none=True)
        out = lm(batch, state, 0.0, None, full_rows, directions=directions)
        out.forward_loss_sum.backward()
        runs[directions] = out, {n: p.grad for n, p in lm.named_parameters() if p.grad is not None}
    (both, both_grads), (fwd, fwd_grads) = runs["both"], runs["forward"]
    assert fwd.forward_loss_sum.dtype == torch.float32
    assert torch.equal(fwd.forward_loss_sum, both.forward_loss_sum)
    assert int(fwd.forward_count) == int(both.forward_count) > 0
    assert float(fwd.backward_loss_sum) == 0.0 and int(fwd.backward_count) == 0
    assert fwd_grads and not any(".backward_layers." in n for n in fwd_grads)  # not in the graph
    assert all(".backward_layers." in n for n in set(both_grads) - set(fwd_grads))
    for name, grad in fwd_grads.items():
        assert torch.equal(grad, both_grads[name]), name
    for k, (pair_fwd, pair_both) in enumerate(zip(fwd.state, both.state)):
        for a, b in zip(pair_fwd[0], pair_both[0]):
            assert torch.equal(a, b), k
        assert pair_fwd[1] is state[k][1]  # the backward stack's state, as it was given


def test_one_direction_runs_one_stack_only():
    corpus, table, vocab = make_data(toy_sentences(30))
    config = tiny_pretrain_config(softmax={"kind": "full"})
    lm = BidirectionalLM(config.model, len(vocab), config.softmax).eval()
    bilm = lm.bilm.bilm
    batch = eval_batches(corpus, table, 8, 50)[0]
    groups = []
    run = bilm.kernels.run
    bilm.kernels.run = lambda layers, *args: groups.append([id(x) for x in layers]) or run(layers, *args)
    with torch.no_grad():
        for directions, stack in (("forward", bilm.forward_layers), ("backward", bilm.backward_layers)):
            groups.clear()
            top, state = lm.top_layer(batch, directions=directions)
            assert groups == [[id(layer)] for layer in stack]  # the other stack's layers never run
            assert top.shape == (*batch.tokens.shape, config.model.bilm.projection_dim)
        groups.clear()
        lm.top_layer(batch)
        assert groups == [[id(f), id(b)] for f, b in zip(bilm.forward_layers, bilm.backward_layers)]
        out = lm(batch, directions="backward")
    assert float(out.forward_loss_sum) == 0.0 and int(out.forward_count) == 0
    assert int(out.backward_count) == int((batch.backward_targets >= 0).sum())
    with pytest.raises(ValueError, match="directions must be one of both, forward, backward, got 'left'"):
        lm.top_layer(batch, directions="left")


def test_the_identity_projection_makes_a_plain_lstm():
    """With W_p = I the projected LSTM is torch's LSTM (gates reordered, the +1 forget bias)."""
    config = pretrain_preset("ptb-char-small").model
    config.bilm.dim = config.bilm.projection_dim = 6
    config.bilm.n_layers = 1
    lm = BidirectionalLM(config, 10, pretrain_preset("ptb-char-small").softmax).double()
    init_uniform(lm, 0.5)
    fix_identity_projection(lm.bilm)
    layer = lm.bilm.bilm.forward_layers[0]
    assert not layer.projection_weight.requires_grad
    H, I = 6, layer.input_dim  # the first layer reads the highway output (525, no projection)
    assert I == 525
    ref = torch.nn.LSTM(I, H, dtype=torch.float64)
    order = torch.cat([torch.arange(0, H), torch.arange(H, 2 * H), torch.arange(3 * H, 4 * H),
                       torch.arange(2 * H, 3 * H)])  # ours (i, f, o, g) -> torch's (i, f, g, o)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(layer.input_weight.t()[order])
        ref.weight_hh_l0.copy_(layer.state_weight.t()[order])
        bias = layer.input_bias.clone()
        bias[H : 2 * H] += FORGET_BIAS
        ref.bias_ih_l0.copy_(bias[order])
        ref.bias_hh_l0.zero_()
    x = torch.randn(7, 3, I, dtype=torch.float64)
    ours, (h, c) = layer(x, [3] * 7, None)
    theirs, (h_ref, c_ref) = ref(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    torch.testing.assert_close(c, c_ref[0], rtol=0, atol=1e-12)


def test_init_uniform_bounds_every_weight_and_effective_bias_and_keeps_the_padding_row():
    config = tiny_pretrain_config()
    lm = BidirectionalLM(config.model, 20, config.softmax)
    init_uniform(lm, 0.05)
    for name, p in lm.named_parameters():
        if name.endswith("input_bias") or ".highway." in name and name.endswith("bias"):
            continue  # checked below
        assert float(p.detach().abs().max()) <= 0.05, name
        assert float(p.detach().abs().max()) > 0.04 or p.numel() < 20, name  # drawn, not zeroed
    H = config.model.bilm.dim
    for layer in list(lm.bilm.bilm.forward_layers) + list(lm.bilm.bilm.backward_layers):
        bias = layer.effective_bias().detach()  # what the gates see: no +1 on the forget gate
        assert float(bias.abs().max()) <= 0.05 and float(bias[H : 2 * H].abs().max()) > 0.04
    for layer in lm.bilm.char_cnn.highway.layers:  # Kim et al.'s -2 on the gate: [transform; gate]
        d = layer.out_features // 2
        transform, gate = layer.bias.detach()[:d], layer.bias.detach()[d:]
        assert float(transform.abs().max()) <= 0.05
        assert -2.05 <= float(gate.min()) and float(gate.max()) <= -1.95
    assert float(lm.bilm.char_cnn.char_embedding.weight[0].detach().abs().max()) == 0.0


def test_without_input_dropout_only_the_layers_above_the_first_are_dropped():
    corpus, table, vocab = make_data(toy_sentences(20))
    config = tiny_pretrain_config().model
    config.bilm.n_layers = 1
    lm = BidirectionalLM(config, len(vocab), tiny_pretrain_config().softmax).train()
    batch = eval_batches(corpus, table, 4, 50)[0]
    for directions in ("forward", "both"):
        with torch.no_grad():
            lm.eval()
            plain, _ = lm.top_layer(batch, directions=directions)
            lm.train()
            kept, _ = lm.top_layer(batch, dropout=0.9, directions=directions, input_dropout=False)
            dropped, _ = lm.top_layer(batch, dropout=0.9, directions=directions)
        torch.testing.assert_close(kept, plain, rtol=0, atol=0)  # one layer: nothing dropped
        assert float((dropped - plain).abs().max()) > 1e-3


# -- the contiguous window order --------------------------------------------------------------------
def test_contiguous_rows_read_their_slice_of_the_corpus_in_order_and_resume():
    lines = [f"w{i} x{i}" for i in range(12)]  # sentence i is "w{i} x{i}": 4 tokens with <S>, </S>
    corpus, table, _ = make_data(lines)
    batcher = WindowBatcher(corpus, table, batch_size=3, window=4, seed=0, contiguous=True)
    seen = [[] for _ in range(3)]
    for _ in range(5):
        batch = batcher.next_batch()
        for r in range(3):
            seen[r].extend(_row_words(batch, r, table))
    # Row r reads sentences 4r .. 4r+3, then starts its slice again (the next epoch).
    for r in range(3):
        expected = []
        for k in range(6):
            i = 4 * r + k % 4
            expected += ["<S>", f"w{i}", f"x{i}", "</S>"]
        assert seen[r] == expected[:20], (r, seen[r])
    # Resume: a fresh batcher loaded from the state continues with the same batches.
    state = json.loads(json.dumps(batcher.state_dict()))
    other = WindowBatcher(corpus, table, batch_size=3, window=4, seed=0, contiguous=True)
    other.load_state_dict(state)
    for _ in range(3):
        a, b = batcher.next_batch(), other.next_batch()
        assert [_row_words(a, r, table) for r in range(3)] == [_row_words(b, r, table) for r in range(3)]
    shuffled = WindowBatcher(corpus, table, batch_size=3, window=4, seed=0)
    with pytest.raises(ValueError, match="shuffled window order"):
        other.load_state_dict(shuffled.state_dict())


def _row_words(batch, r, table):
    """The words of row r of a window batch, from its characters (via the word table)."""
    by_chars = {tuple(table.chars[t].tolist()): table.words[t] for t in range(1, len(table))}
    return [by_chars[tuple(batch.token_chars[i].tolist())] for i in batch.tokens[r].tolist()]
