"""scripts/task_results.py (the README's task table) on tiny synthetic data: every model is trained
once per seed into its own folder, the table's mean ± sd is computed from the per-seed scores,
finished runs are reused, and bad arguments stop before any training."""

import importlib.util
import json
import os
import statistics

import pytest
import torch

from elmo import ElmoBiLM
from test_task_cli import ner_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETS = [x for s in ("hidden_dim=8", "word_dim=8", "char_dim=6", "mlp_dim=8", "char_filters=1:4,2:4",
                    "num_lstm_layers=1", "epochs=2", "batch_size=4") for x in ("--set", s)]


def load_script():
    spec = importlib.util.spec_from_file_location("task_results", os.path.join(ROOT, "scripts", "task_results.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_and_model(tmp_path_factory):
    from conftest import make_tiny_config

    root = tmp_path_factory.mktemp("task_results")
    os.makedirs(root / "data" / "conll2003")
    os.makedirs(root / "data" / "polarity")
    for name, n, offset in (("train", 12, 0), ("valid", 6, 1), ("test", 6, 2)):
        ner_file(root / "data" / "conll2003" / f"{name}.txt", n, offset)
    good, bad = ["a fine film", "warm and funny", "great fun"], ["dull and long", "a mess", "so boring"]
    with open(root / "data" / "polarity" / "pang_lee_sentences.csv", "w", encoding="utf-8-sig") as f:
        for i in range(20):
            f.write(f'"1","{good[i % 3]} {i} .\n"\n"-1","{bad[i % 3]} {i} .\n"\n')
    torch.manual_seed(0)
    model = str(root / "elmo")
    ElmoBiLM(make_tiny_config()).save_pretrained(model)
    return str(root / "data"), model


def test_seeds_table_and_reuse(tmp_path, capsys, data_and_model):
    data, model = data_and_model
    script, out = load_script(), str(tmp_path / "out")
    argv = ["--model", model, "--data", data, "--out", out, "--seeds", "0,1", "--threads", "1", *SETS]
    assert script.main(argv) == 0
    folders = {"ner_elmo", "ner_elmo_seed1", "ner_base", "ner_base_seed1", "polarity_elmo", "polarity_elmo_seed1",
               "polarity_base", "polarity_base_seed1", "polarity"}
    assert set(os.listdir(out)) == folders | {"results.md", "results.json"}
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results["seeds"] == [0, 1]
    assert sorted(results["runs"]) == ["ner/ELMo", "ner/no ELMo", "polarity/ELMo", "polarity/no ELMo"]
    with open(os.path.join(out, "results.md")) as f:
        table = f.read()
    assert "dev (mean ± sd, 2 seeds)" in table
    for key, runs in results["runs"].items():
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            for split in ("train", "dev", "test"):
                assert 0.0 <= r[split] <= 100.0
        dev = [r["dev"] for r in runs]
        assert f"{statistics.mean(dev):.2f} ± {statistics.stdev(dev):.2f}" in table
        task, variant = key.split("/")
        assert f"| {task} | {variant} | 1 | {runs[1]['train']:.2f} | {runs[1]['dev']:.2f} | {runs[1]['test']:.2f} |" in table
    # each seed's model was trained with that seed
    for folder, seed in (("ner_base", 0), ("ner_base_seed1", 1)):
        with open(os.path.join(out, folder, "task_config.json")) as f:
            assert json.load(f)["train"]["seed"] == seed

    # a second run reuses the finished models (no training) and gives the same scores
    stamp = os.path.getmtime(os.path.join(out, "ner_elmo_seed1", "model.pt"))
    capsys.readouterr()
    assert script.main(argv[:-len(SETS)]) == 0
    assert os.path.getmtime(os.path.join(out, "ner_elmo_seed1", "model.pt")) == stamp
    with open(os.path.join(out, "results.json")) as f:
        again = json.load(f)
    assert [[r[s] for r in runs for s in ("train", "dev", "test")] for runs in again["runs"].values()] == \
        [[r[s] for r in runs for s in ("train", "dev", "test")] for runs in results["runs"].values()]


def test_bad_arguments_stop_before_training(tmp_path, capsys, data_and_model):
    data, _ = data_and_model
    script, out = load_script(), str(tmp_path / "out")
    for argv, message in ((["--seeds", "0,x"], "--seeds '0,x': expected comma-separated integers"),
                          (["--variants", "elmo"], "--model ELMO_DIR is needed"),
                          (["--tasks", "ner,srl", "--model", "m"], "--tasks 'ner,srl': expected"),
                          (["--variants", "base,bert", "--model", "m"], "--variants 'base,bert': expected")):
        with pytest.raises(SystemExit) as e:
            script.main(["--data", data, "--out", out, *argv])
        assert e.value.code == 2
        assert message in capsys.readouterr().err
    assert not os.path.exists(out)


def test_baselines_alone_need_no_model(tmp_path, data_and_model):
    data, _ = data_and_model
    script, out = load_script(), str(tmp_path / "out")
    assert script.main(["--data", data, "--out", out, "--tasks", "ner", "--variants", "base", "--threads", "1",
                        *SETS]) == 0
    with open(os.path.join(out, "results.json")) as f:
        assert list(json.load(f)["runs"]) == ["ner/no ELMo"]
    assert sorted(os.listdir(out)) == ["ner_base", "results.json", "results.md"]
