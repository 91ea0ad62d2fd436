"""scripts/bench_tasks.py --phases: the phase-timed training step must be the training loop's step
(same loss, same parameters after the update), only cut into separately timed pieces."""

import importlib.util
import json
import os
import random

import pytest
import torch

from conftest import make_tiny_config
from elmo import ElmoBiLM
from tasks import ner
from tasks.cache import LayerCache
from tasks.config import resolve_config
from tasks.data import BatchMaker, Vocabulary
from tasks.train import clip_grad_norm, make_adam
from test_task_cli import ner_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_script():
    spec = importlib.util.spec_from_file_location("bench_tasks", os.path.join(ROOT, "scripts", "bench_tasks.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def setup(tmp_path):
    ner_file(tmp_path / "train.txt", n=10)
    torch.manual_seed(0)
    bilm = ElmoBiLM(make_tiny_config())
    cfg = resolve_config("ner", {"hidden_dim": 8, "word_dim": 6, "char_dim": 5, "char_filters": "1:4,2:4",
                                 "batch_size": 5, "epochs": 1, "progress": False, "mix_l2": 0.01,
                                 "grad_clip": 0.5, "dropout": 0.3})
    data = ner.read(str(tmp_path / "train.txt"), cfg)
    labels = ner.setup(data, cfg)
    words = Vocabulary.words([x.tokens for x in data], cfg.min_word_count)
    cache = LayerCache(bilm, batch_size=4)
    cache.fill(x.tokens for x in data)
    model = ner.build(cfg, len(words), labels, bilm).train()
    with torch.no_grad():  # away from 0, where the L2 term and its gradient vanish
        model.encoder.scalar_mix.scalar_parameters.copy_(torch.tensor([3.0, -2.0, 1.5]))
    maker = BatchMaker(words, labels, need_chars=model.encoder.needs_chars(True), cache=cache)
    batch = next(maker.batches(ner.targets(data, cfg), cfg.batch_size, shuffle=True, rng=random.Random(0)))
    return cfg, model, batch, data, bilm, cache


def test_phased_step_equals_the_training_step(setup):
    bench = load_script()
    cfg, model, batch, _, _, _ = setup
    params = [p for p in model.parameters() if p.requires_grad]
    initial = [p.detach().clone() for p in params]

    # the step of tasks.train.train
    optimizer = make_adam(params, cfg.lr)
    torch.manual_seed(7)
    loss = model.loss(batch) + cfg.mix_l2 * model.encoder.mix_penalty()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(clip_grad_norm(params, cfg.grad_clip))
    optimizer.step()
    updated = [p.detach().clone() for p in params]

    # the same step, phase by phase, from the same weights, dropout masks and optimizer state
    with torch.no_grad():
        for p, w in zip(params, initial):
            p.copy_(w)
    called = []
    torch.manual_seed(7)
    phased_loss = bench.phased_step(model, batch, cfg, params, make_adam(params, cfg.lr), called.append)

    assert called == list(bench.PHASES[1:])
    assert float(phased_loss) == pytest.approx(float(loss.detach()), rel=1e-6)
    assert grad_norm > cfg.grad_clip  # the clipping was active
    assert all(p.grad is not None for p in params)
    for p, want, before in zip(params, updated, initial):
        assert not torch.equal(want, before)  # Adam moved every trained weight
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6)


def test_phase_seconds_cover_the_epoch(setup):
    bench = load_script()
    cfg, _, _, data, bilm, cache = setup
    calls = []
    hook = bilm.register_forward_hook(lambda *_: calls.append(1))
    seconds = bench.phase_seconds(cfg, bilm, data, cache)
    hook.remove()
    assert set(seconds) == set(bench.PHASES) | {"total"}
    assert all(v > 0 for v in seconds.values())
    # consecutive readings of one monotonic clock: the phases never add up to more than the pass
    assert sum(seconds[name] for name in bench.PHASES) <= seconds["total"] + 1e-9
    assert calls == []  # the epoch ran on the cached layers only


def test_main_reports_first_and_later_epochs(tmp_path, capsys):
    bench = load_script()
    ner_file(tmp_path / "train.txt", n=6)
    assert bench.main(["--preset", "tiny", "--train", str(tmp_path / "train.txt"), "--epochs", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sentences"] == 6 and result["epochs"] == 3
    for mode in ("recomputed", "cached"):
        epochs = result[f"{mode}_epochs_s"]
        assert len(epochs) == 3 and all(x > 0 for x in epochs)  # no early stopping cut a mode short
        assert result[f"{mode}_epoch_s"] == epochs[0]
        assert result[f"{mode}_later_epoch_s"] == pytest.approx((epochs[1] + epochs[2]) / 2)
        assert isinstance(result[f"{mode}_minor_faults"], int)
    assert result["speedup"] == pytest.approx(result["recomputed_epoch_s"] / result["cached_epoch_s"])
    assert result["speedup_later"] == pytest.approx(result["recomputed_later_epoch_s"] / result["cached_later_epoch_s"])
    with pytest.raises(SystemExit):
        bench.main(["--preset", "tiny", "--train", str(tmp_path / "train.txt"), "--epochs", "0"])
