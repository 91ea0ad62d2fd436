"""End to end through ``tasks.cli.main``: train / evaluate / predict per task, with a tiny random
ELMo (saved to a tmp folder) and with --no-elmo; cached layers; fine-tuning; errors."""

import json
import os

import pytest
import torch

from elmo import ElmoBiLM, batch_to_ids
from tasks.checkpoint import load_model
from tasks.cli import main
from tasks.metrics import conlleval
from tasks.readers import read_conll2003, read_conll2005_props, read_conll2012_srl
from tasks.tags import is_valid

SMALL = ["--set", "hidden_dim=8", "--set", "word_dim=8", "--set", "char_dim=6", "--set", "mlp_dim=8", "--set", "predicate_dim=4",
         "--set", "char_filters=1:4,2:4", "--set", "num_lstm_layers=1", "--set", "num_threads=1", "--batch-size", "4",
         "--quiet"]


@pytest.fixture(scope="module")
def elmo_dir(tmp_path_factory):
    from conftest import make_tiny_config

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("elmo") / "tiny")
    ElmoBiLM(make_tiny_config()).save_pretrained(path)
    return path


def ner_file(path, n=12, offset=0):
    people, places = ["Ann Lee", "Bob", "Carla Diaz", "Dev"], ["Paris", "New York", "Oslo"]
    with open(path, "w") as f:
        f.write("-DOCSTART- -X- -X- O\n\n")
        for i in range(offset, offset + n):
            person, place = people[i % 4].split(), places[i % 3].split()
            rows = [(w, "B-PER" if j == 0 else "I-PER") for j, w in enumerate(person)]
            rows += [("went", "O"), ("to", "O")]
            rows += [(w, "B-LOC" if j == 0 else "I-LOC") for j, w in enumerate(place)] + [(".", "O")]
            f.write("".join(f"{w} X X {t}\n" for w, t in rows) + "\n")
    return str(path)


def run(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("elmo", [True, False])
def test_ner_train_evaluate_predict(tmp_path, capsys, elmo_dir, elmo):
    train, dev = ner_file(tmp_path / "train.txt"), ner_file(tmp_path / "dev.txt", 6, offset=1)
    out = str(tmp_path / "model")
    source = ["--model", elmo_dir] if elmo else ["--no-elmo"]
    summary = json.loads(run(capsys, ["train", "ner", "--train", train, "--dev", dev, "--test", dev, "--out", out,
                                      "--epochs", "3", *source, *SMALL]).strip())
    assert summary["epochs"] == 3 and 0.0 <= summary["dev"] <= 100.0
    assert sorted(os.listdir(out)) == sorted(["task_config.json", "vocab.json", "model.pt", "metrics.jsonl",
                                              "results.json"] + (["elmo"] if elmo else []))
    cfg = json.load(open(os.path.join(out, "task_config.json")))
    assert sorted(cfg) == ["data", "elmo", "head", "task", "train"]
    assert (cfg["task"], cfg["head"]["tag_scheme"], cfg["data"]["scheme"], cfg["elmo"]["use"]) == ("ner", "bioul", "bio", elmo)
    assert cfg["head"]["char_dim"] == 6 and cfg["head"]["word_dim"] == 8
    log = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert all(r["bilm_calls"] == 0 for r in log)  # cached layers: training never runs the biLM
    if elmo:
        assert len(log[0]["mix_weights"]) == 3 and abs(sum(log[0]["mix_weights"]) - 1) < 1e-6
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["dev"]["f1"] == summary["dev"] and results["test"]["f1"] == summary["test"]

    # evaluate: the reloaded folder scores what training scored (same head, same ELMo copy)
    scores = json.loads(run(capsys, ["evaluate", out, "--data", dev, "--json", "--quiet"]))
    assert scores["task"] == "ner" and scores["metric"] == "f1"
    assert scores["f1"] == pytest.approx(results["dev"]["f1"], abs=1e-9)
    assert "FB1" in run(capsys, ["evaluate", out, "--data", dev, "--quiet"])

    # predict: CoNLL columns token gold predicted; conlleval of the file = evaluate's score
    pred = str(tmp_path / "pred.txt")
    run(capsys, ["predict", out, "--data", dev, "--output", pred, "--quiet"])
    gold_sents, pred_sents = [], []
    for x in read_conll2003(pred, tag_column=-1):
        pred_sents.append(x.tags)
    for x in read_conll2003(pred, tag_column=1):
        gold_sents.append(x.tags)
    assert len(pred_sents) == 6 and all(is_valid(t, "bio") for t in pred_sents)
    assert conlleval(gold_sents, pred_sents)["f1"] == pytest.approx(scores["f1"])
    # a file of tokens only gets token + prediction columns
    tokens_only = tmp_path / "tokens.txt"
    tokens_only.write_text("Ann\nwent\nto\nOslo\n\nBob\n")
    run(capsys, ["predict", out, "--data", str(tokens_only), "--output", pred, "--force", "--quiet"])
    lines = open(pred).read().split("\n")
    assert [len(line.split()) for line in lines] == [2, 2, 2, 2, 0, 2, 0, 0]


def test_uncached_and_fine_tuned_runs_call_the_biLM(tmp_path, capsys, elmo_dir):
    train, dev = ner_file(tmp_path / "train.txt", 8), ner_file(tmp_path / "dev.txt", 4)
    out = str(tmp_path / "nocache")
    run(capsys, ["train", "ner", "--train", train, "--dev", dev, "--out", out, "--model", elmo_dir,
                 "--epochs", "2", "--set", "cache=none", *SMALL])
    log = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["bilm_calls"] for r in log] == [3, 3]  # every epoch: 2 training batches + 1 dev batch
    out = str(tmp_path / "tuned")
    run(capsys, ["train", "ner", "--train", train, "--dev", dev, "--out", out, "--model", elmo_dir,
                 "--epochs", "2", "--fine-tune", "--set", "lr=0.01", *SMALL])
    original, tuned = ElmoBiLM.from_pretrained(elmo_dir), ElmoBiLM.from_pretrained(os.path.join(out, "elmo"))
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, original.state_dict()[k])]
    assert changed  # the fine-tuned biLM was saved in the model folder
    cfg, task, words, labels, model = load_model(out)
    assert cfg.elmo.fine_tune and torch.equal(model.encoder.bilm.state_dict()[changed[0]], tuned.state_dict()[changed[0]])
    out = str(tmp_path / "hdf5")
    run(capsys, ["train", "ner", "--train", train, "--dev", dev, "--out", out, "--model", elmo_dir,
                 "--epochs", "1", "--set", "cache=hdf5", *SMALL])
    assert os.path.isfile(os.path.join(out, "elmo_cache.h5"))
    assert json.loads(open(os.path.join(out, "metrics.jsonl")).readline())["bilm_calls"] == 0


SRL = open(os.path.join(os.path.dirname(__file__), "test_readers.py")).read().split('CONLL2012 = """')[1].split('"""')[0]


@pytest.mark.parametrize("elmo", [True, False])
def test_srl_train_evaluate_predict(tmp_path, capsys, elmo_dir, elmo):
    path = tmp_path / "a.gold_conll"
    path.write_text(SRL)
    out = str(tmp_path / "srl")
    source = ["--model", elmo_dir] if elmo else ["--no-elmo"]
    run(capsys, ["train", "srl", "--train", str(path), "--dev", str(path), "--out", out, "--epochs", "2",
                 *source, *SMALL])
    scores = json.loads(run(capsys, ["evaluate", out, "--data", str(path), "--json", "--quiet"]))
    assert scores["task"] == "srl" and "V" not in scores["per_type"]  # V spans are not scored
    assert scores["gold_chunks"] == 4  # ARG0 ARG1 | ARG0 ARG1
    pred = str(tmp_path / "pred.props")
    run(capsys, ["predict", out, "--data", str(path), "--output", pred, "--quiet"])
    frames = read_conll2005_props(pred)  # the output is CoNLL-2005 props, readable back
    gold = read_conll2012_srl(str(path))
    assert [(f.tokens, f.predicate) for f in frames] == [(f.tokens, f.predicate) for f in gold]


@pytest.mark.parametrize("elmo", [True, False])
def test_classify_train_evaluate_predict(tmp_path, capsys, elmo_dir, elmo):
    rows = [("1", "a fine , moving film"), ("-1", "dull and slow ."), ("1", "great fun"), ("-1", "a bad one")] * 3
    path = tmp_path / "p.csv"
    path.write_text("".join(f'"{lab}","{text}\n"\n' for lab, text in rows), encoding="utf-8-sig")
    out = str(tmp_path / "cls")
    source = ["--model", elmo_dir] if elmo else ["--no-elmo"]
    cols = ["--set", "data.text_column=1", "--set", "data.label_column=0"]  # dotted paths (SMALL: old names)
    summary = json.loads(run(capsys, ["train", "classify", "--train", str(path), "--dev", str(path), "--out", out,
                                      "--epochs", "2", *cols, *source, *SMALL]).strip())
    scores = json.loads(run(capsys, ["evaluate", out, "--data", str(path), "--json", "--quiet"]))
    assert scores["examples"] == 12 and scores["accuracy"] == pytest.approx(summary["dev"])
    assert json.load(open(os.path.join(out, "vocab.json")))["labels"] == ["-1", "1"]
    pred = str(tmp_path / "labels.tsv")
    run(capsys, ["predict", out, "--data", str(path), "--output", pred, "--quiet"])
    lines = open(pred).read().splitlines()
    assert len(lines) == 12 and {line.split("\t")[0] for line in lines} <= {"1", "-1"}
    assert lines[0].split("\t")[1] == "a fine , moving film"


def test_cli_errors(tmp_path, capsys, elmo_dir):
    train = ner_file(tmp_path / "train.txt", 4)
    assert main(["train", "ner", "--train", train, "--dev", train, "--out", str(tmp_path / "m"), "--no-elmo",
                 "--set", "hiden_dim=3", "--quiet"]) == 2
    assert "unknown field 'hiden_dim'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "--data", train]) == 2
    assert "not a task model folder" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("EU X B-ORG\nrejects O\n")
    assert main(["train", "ner", "--train", str(bad), "--dev", train, "--out", str(tmp_path / "m"),
                 "--model", elmo_dir, "--quiet"]) == 2
    assert f"{bad}:2: expected 3 columns" in capsys.readouterr().err


def test_original_weight_files_are_copied_into_the_model_folder(tmp_path, capsys, elmo_dir):
    from elmo import save_original

    bilm = ElmoBiLM.from_pretrained(elmo_dir)
    options, weights = str(tmp_path / "options.json"), str(tmp_path / "weights.hdf5")
    save_original(bilm, options, weights)
    train = ner_file(tmp_path / "train.txt", 4)
    out = str(tmp_path / "orig")
    run(capsys, ["train", "ner", "--train", train, "--dev", train, "--out", out, "--options-file", options,
                 "--weight-file", weights, "--epochs", "1", *SMALL])
    cfg = json.load(open(os.path.join(out, "task_config.json")))
    assert options in cfg["elmo"]["source"] and weights in cfg["elmo"]["source"]
    copy = ElmoBiLM.from_pretrained(os.path.join(out, "elmo"))
    ids = batch_to_ids([["Ann", "went", "to", "Oslo"]])
    bilm.eval(), copy.eval()
    with torch.no_grad():
        for a, b in zip(bilm(ids).layers, copy(ids).layers):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert main(["train", "ner", "--train", train, "--dev", train, "--out", out, "--options-file", options,
                 "--quiet"]) == 2
    assert "--options-file needs --weight-file" in capsys.readouterr().err
