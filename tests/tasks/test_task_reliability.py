"""elmo-task given what a user may try (issue 14): predict never overwrites its input or an
existing file without --force, a damaged model folder and a full disk are one line with exit
code 2, bad bytes name the file and line, a lone \\r does not split a line, unseen dev labels are
reported, and early stopping waits for the dev metric to move (issue 14 point 9)."""

import json
import logging
import os

import pytest
import torch

from tasks.cli import main
from tasks.config import TaskConfig, TaskElmoConfig, TaskTrainConfig
from tasks.readers import DataError, read_classification, read_conll2003
from tasks.train import train

SMALL = ["--set", "hidden_dim=8", "--set", "word_dim=8", "--set", "char_dim=6", "--set", "mlp_dim=8",
         "--set", "char_filters=1:4,2:4", "--set", "num_lstm_layers=1", "--set", "num_threads=1",
         "--batch-size", "4", "--quiet"]


def ner_file(path, n=8):
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"{['Ann', 'Bob', 'Dev'][i % 3]} B-PER\nwent O\nto O\n{['Paris', 'Oslo'][i % 2]} B-LOC\n\n")
    return str(path)


def fails(capsys, argv):
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    data = ner_file(root / "train.txt")
    out = str(root / "model")
    assert main(["train", "ner", "--train", data, "--dev", data, "--out", out, "--no-elmo", "--epochs", "1",
                 *SMALL]) == 0
    return out, data


def test_predict_refuses_its_input_and_an_existing_output(model_dir, tmp_path, capsys):
    out, data = model_dir
    before = open(data, "rb").read()
    err = fails(capsys, ["predict", out, "--data", data, "--output", data, "--quiet"])
    assert f"--output {data} is the input file {data}" in err
    link = tmp_path / "link.txt"
    link.symlink_to(data)
    err = fails(capsys, ["predict", out, "--data", data, "--output", str(link), "--force", "--quiet"])
    assert "is the input file" in err  # --force never allows writing over the input
    assert open(data, "rb").read() == before
    fails(capsys, ["predict", out, "--data", data, "--output", os.path.join(out, "model.pt"), "--force", "--quiet"])
    existing = tmp_path / "pred.txt"
    existing.write_text("mine\n")
    err = fails(capsys, ["predict", out, "--data", data, "--output", str(existing), "--quiet"])
    assert "already exists; pass --force" in err and existing.read_text() == "mine\n"
    assert main(["predict", out, "--data", data, "--output", str(existing), "--force", "--quiet"]) == 0
    assert existing.read_text().startswith("Ann B-PER ")


def test_train_refuses_a_folder_holding_a_model(model_dir, capsys):
    out, data = model_dir
    weights = open(os.path.join(out, "model.pt"), "rb").read()
    err = fails(capsys, ["train", "ner", "--train", data, "--dev", data, "--out", out, "--no-elmo", *SMALL])
    assert f"--out {out} already holds a task model (task_config.json, model.pt); pass --force" in err
    assert open(os.path.join(out, "model.pt"), "rb").read() == weights


def test_a_damaged_model_folder_is_one_line(model_dir, tmp_path, capsys):
    import shutil

    out, data = model_dir
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    weights = os.path.join(copy, "model.pt")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    err = fails(capsys, ["evaluate", copy, "--data", data, "--quiet"])
    assert f"{weights}: cannot be read (" in err and "damaged" in err
    fails(capsys, ["predict", copy, "--data", data, "--output", str(tmp_path / "p.txt"), "--quiet"])
    with open(os.path.join(copy, "vocab.json"), "w") as f:
        f.write('{"words": [')
    assert "vocab.json: cannot be read (JSONDecodeError" in fails(capsys, ["evaluate", copy, "--data", data])


def test_a_full_disk_while_saving_the_model_is_one_line(tmp_path, capsys, monkeypatch):
    data = ner_file(tmp_path / "train.txt")

    def no_space(obj, f, *args, **kwargs):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed; "
                           "unexpected pos 512 vs 256")

    monkeypatch.setattr(torch, "save", no_space)
    err = fails(capsys, ["train", "ner", "--train", data, "--dev", data, "--out", str(tmp_path / "m"),
                         "--no-elmo", "--epochs", "1", *SMALL])
    assert "model.pt: no space left on the device (" in err
    assert not [f for f in os.listdir(tmp_path / "m") if ".tmp." in f]


def test_bad_bytes_name_the_file_and_line_and_a_lone_cr_does_not_split(tmp_path, capsys):
    conll = tmp_path / "latin1.txt"
    conll.write_bytes(b"Ann B-PER\nwent O\n\nJos\xe9 B-PER\n")
    with pytest.raises(DataError, match=r"latin1.txt:4: byte 0xe9 at column 4 is not UTF-8"):
        read_conll2003(str(conll))
    err = fails(capsys, ["train", "ner", "--train", str(conll), "--dev", str(conll), "--out",
                         str(tmp_path / "m"), "--no-elmo", *SMALL])
    assert "latin1.txt:4: byte 0xe9" in err
    csv_file = tmp_path / "c.csv"
    csv_file.write_bytes(b"label,text\n1,good\n0,caf\xe9 bad\n")
    with pytest.raises(DataError, match=r"c.csv:3: byte 0xe9 at column 6"):
        read_classification(str(csv_file))
    cr = tmp_path / "cr.txt"
    cr.write_bytes(b"Ann B-PER\nwent\rO\n\nBob B-PER\n")  # one line "went O", not "went" and "O"
    assert [(x.tokens, x.tags) for x in read_conll2003(str(cr))] == [(["Ann", "went"], ["B-PER", "O"]),
                                                                     (["Bob"], ["B-PER"])]
    cr.write_bytes(b"Ann B-PER\r\nwent O\r\n\r\nBob B-PER\r\n")  # CRLF files still read
    assert [x.tokens for x in read_conll2003(str(cr))] == [["Ann", "went"], ["Bob"]]
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_bytes(b'{"text": "a\\rb", "label": 1}\r\n{"text": "c", "label": 0}\n')
    assert [x.tokens for x in read_classification(str(jsonl))] == [["a", "b"], ["c"]]


def test_a_byte_order_mark_starting_a_file_is_not_part_of_its_first_token(tmp_path):
    """Every reader (CoNLL-2003, CoNLL-2012 and -2005 SRL, CSV, JSON-lines, class folders, and
    elmo-task split's class folders) reads a file that starts with a UTF-8 byte-order mark as the
    same file without it: the same instances and the same line numbers, in errors too. A U+FEFF
    inside a line, or starting a later line, is text and stays."""
    from tasks.readers import read_conll2005_props, read_conll2012_srl
    from tasks.split import split_classification

    def twins(name, text):
        """plain/NAME and marked/NAME (the same bytes after a mark)."""
        paths = []
        for side, mark in (("plain", b""), ("marked", b"\xef\xbb\xbf")):
            path = tmp_path / side / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(mark + text.encode())
            paths.append(str(path))
        return paths

    def seen(instances, folder):
        return [(x.tokens, x.tags, x.label, x.predicate, x.sentence, x.source.replace(folder, "DIR"))
                for x in instances]

    def same(reader, name, text):
        plain, marked = twins(name, text)
        a = seen(reader(plain), str(tmp_path / "plain"))
        assert seen(reader(marked), str(tmp_path / "marked")) == a
        return a

    ner = same(read_conll2003, "ner.txt", "Ann B-PER\nzero\ufeffwidth O\n\n\ufeffBob B-PER\n")
    assert [x[0] for x in ner] == [["Ann", "zero\ufeffwidth"], ["\ufeffBob"]]
    assert [x[5] for x in ner] == ["DIR/ner.txt:1", "DIR/ner.txt:4"]
    row = "d 0 {} w{} NN * - - - - * {} -\n"
    srl = same(read_conll2012_srl, "x.gold_conll",
               "#begin document (d); part 000\n" + row.format(0, 0, "(ARG0*)") + row.format(1, 1, "(V*)")
               + "\n#end document\n")
    assert [(x[0], x[1], x[3]) for x in srl] == [(["w0", "w1"], ["B-ARG0", "B-V"], 1)]
    props = same(read_conll2005_props, "props.txt", "The - (A0*\ncat - *)\nsat sit (V*)\n")
    assert props[0][:2] == (["The", "cat", "sat"], ["B-A0", "I-A0", "B-V"])
    csv_rows = same(read_classification, "c.csv", "text,label\na \ufefffine film,1\ndull .,0\n")
    assert [(x[0], x[2], x[5]) for x in csv_rows] == [(["a", "\ufefffine", "film"], "1", "DIR/c.csv: row 2"),
                                                      (["dull", "."], "0", "DIR/c.csv: row 3")]
    jsonl = same(read_classification, "j.jsonl",
                 '{"text": "good", "label": 1}\n{"text": "\ufeffbad", "label": 0}\n')
    assert [x[0] for x in jsonl] == [["good"], ["\ufeffbad"]]
    twins("folder/neg/1.txt", "a \ufeff inside stays\n")
    twins("folder/pos/2.txt", "great fun\n")
    folders = [seen(read_classification(str(tmp_path / side / "folder")), str(tmp_path / side))
               for side in ("plain", "marked")]
    assert folders[1] == folders[0]
    assert [(x[0], x[2]) for x in folders[0]] == [(["a", "\ufeff", "inside", "stays"], "neg"),
                                                  (["great", "fun"], "pos")]
    parts = [split_classification(str(tmp_path / side / "folder"), str(tmp_path / f"split_{side}"), dev=0.0,
                                  test=0.0) for side in ("plain", "marked")]
    assert open(parts[1]["train"], "rb").read() == open(parts[0]["train"], "rb").read()

    plain, marked = twins("bad.txt", "Ann B-PER\nwent O\nto O extra\n")
    for path in (plain, marked):  # line numbers are unchanged
        with pytest.raises(DataError, match=r"bad.txt:3: "):
            read_conll2003(path)


def test_labels_never_seen_in_training_are_reported(tmp_path, caplog):
    from tasks.cli import _warn_unseen
    from tasks.readers import Instance

    train_data = [Instance(["a"], label="1"), Instance(["b"], label="-1")]
    dev = [Instance(["c"], label="1.0"), Instance(["d"], label="1.0"), Instance(["e"], label="1")]
    with caplog.at_level(logging.WARNING, logger="tasks.cli"):
        _warn_unseen("--dev d.csv", dev, train_data)
    assert "--dev d.csv: labels never seen in training: '1.0' (2x)" in caplog.text
    caplog.clear()
    tagged = [Instance(["x"], tags=["B-PER"]), Instance(["y", "z"], tags=["B-LOC", "I-LOC"])]
    with caplog.at_level(logging.WARNING, logger="tasks.cli"):
        _warn_unseen("--test t", [Instance(["q", "r"], tags=["B-ORG", "I-ORG"])] + tagged, tagged)
    assert "--test t: labels never seen in training: 'ORG' (2x)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tasks.cli"):
        _warn_unseen("--dev d", tagged, tagged)
    assert caplog.text == ""


class _Scripted:
    """A task whose dev metric follows a script (the model is a trivial linear layer)."""

    METRIC = "f1"

    def __init__(self, values):
        self.values = list(values)

    def decode(self, predicted, labels, cfg):
        return predicted

    def evaluate(self, instances, predictions):
        return {"f1": self.values.pop(0)}


class _Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.encoder = type("E", (), {"scalar_mix": None, "bilm": None})()

    def loss(self, batch):
        return (self.w ** 2).sum()

    def predict(self, batch):
        return [0 for _ in batch.index]


class _Maker:
    def batches(self, instances, batch_size, shuffle=False, rng=None, with_targets=True):
        from tasks.data import TaskBatch

        yield TaskBatch(mask=torch.ones(1, 1, dtype=torch.bool), index=list(range(len(instances))))


@pytest.mark.parametrize("values, epochs", [
    ([0.0] * 8 + [5.0, 4.0, 3.0], 11),  # 8 epochs at the start value, then 2 without improvement
    ([10.0, 20.0, 15.0, 15.0, 30.0], 4),  # left the start at epoch 2: patience 2 ends it at epoch 4
])
def test_patience_counts_once_the_dev_metric_has_left_its_start(values, epochs, caplog):
    from tasks.readers import Instance

    cfg = TaskConfig(task="classify", elmo=TaskElmoConfig(use=False, mix_l2=0.0),
                     train=TaskTrainConfig(patience=2, epochs=len(values), progress=False))
    data = [Instance(["a"], label="x")]
    with caplog.at_level(logging.INFO, logger="tasks.train"):
        summary = train(_Head(), _Scripted(values), cfg, data, data, _Maker(), None)
    assert summary["epochs"] == epochs
    assert summary["best_dev_f1"] == max(values[:epochs])
    if values[0] == 0.0:
        assert "epoch 5: dev f1 is still 0.00, its value after epoch 1" in caplog.text
        assert "training has stalled" in caplog.text


def test_a_run_that_never_learns_says_so(caplog):
    from tasks.readers import Instance

    cfg = TaskConfig(task="classify", elmo=TaskElmoConfig(use=False, mix_l2=0.0),
                     train=TaskTrainConfig(patience=2, epochs=6, progress=False))
    data = [Instance(["a"], label="x")]
    with caplog.at_level(logging.INFO, logger="tasks.train"):
        summary = train(_Head(), _Scripted([0.0] * 6), cfg, data, data, _Maker(), None)
    assert summary["epochs"] == 6  # patience never ran out: the metric never moved
    assert "dev f1 never left its value after epoch 1 (0.00) in 6 epochs" in caplog.text


def test_residual_deep_bilstm_adds_each_later_layer_input():
    from tasks.encoder import SequenceEncoder

    torch.manual_seed(0)
    deep = SequenceEncoder(6, 3, 2, 0.0, residual=True)
    first, second = SequenceEncoder(6, 3, 1, 0.0), SequenceEncoder(6, 3, 1, 0.0)
    first.layers[0].load_state_dict(deep.layers[0].state_dict())
    second.layers[0].load_state_dict(deep.layers[1].state_dict())
    x = torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    h1 = first(x, mask)
    expected = second(h1, mask) + h1
    torch.testing.assert_close(deep(x, mask), expected, rtol=0, atol=1e-6)
    assert deep(x, mask)[1, 3:].abs().max() == 0  # padding stays zero
    plain = SequenceEncoder(6, 3, 2, 0.0)
    plain.load_state_dict(deep.state_dict())
    torch.testing.assert_close(plain(x, mask), second(h1, mask), rtol=0, atol=1e-6)


def test_srl_defaults_use_the_residual_stack_and_old_configs_load_without_it(tmp_path):
    from tasks.config import resolve_config

    from tasks.config import FLAT_NAMES

    assert resolve_config("srl", {}).head.lstm_residual is True
    assert resolve_config("ner", {}).head.lstm_residual is False
    nested = resolve_config("srl", {}).to_dict()
    old = {name: nested[path.split(".")[0]].get(path.split(".")[1]) for name, path in FLAT_NAMES.items()}
    old = {"task": "srl", **{k: v for k, v in old.items() if v is not None}}  # the flat layout of then
    assert old["hidden_dim"] == 300 and "predicate_dim" in old and "mlp_dim" not in old
    del old["lstm_residual"]  # a task_config.json written before the field existed
    (tmp_path / "task_config.json").write_text(json.dumps(old))
    assert TaskConfig.load(tmp_path / "task_config.json").head.lstm_residual is False


def test_every_task_module_follows_the_task_protocol():
    import inspect

    from tasks.checkpoint import get_task
    from tasks.config import TASKS
    from tasks.task import Task

    for name in TASKS:
        module = get_task(name)
        assert isinstance(module, Task), name
        for member in ("read", "setup", "targets", "build", "decode", "evaluate", "write"):
            wanted = list(inspect.signature(getattr(Task, member)).parameters)[1:]  # without self
            assert list(inspect.signature(getattr(module, member)).parameters) == wanted, (name, member)
    assert not isinstance(object(), Task)
    with pytest.raises(ValueError, match="unknown task 'pos'; valid tasks: ner, srl, classify"):
        get_task("pos")


def test_orphaned_temporary_files_are_removed_at_the_next_run(model_dir, tmp_path, capsys):
    import shutil

    out, data = model_dir
    dead = 2 ** 22 + 12345  # above the kernel's default pid_max: no such process
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    orphan = os.path.join(copy, f"model.pt.tmp.{dead}")
    open(orphan, "wb").write(b"half a model")
    assert main(["train", "ner", "--train", data, "--dev", data, "--out", copy, "--force", "--no-elmo",
                 "--epochs", "1", *SMALL, "--threads", "1"]) == 0
    assert json.load(open(os.path.join(copy, "task_config.json")))["train"]["num_threads"] == 1  # --threads
    assert not os.path.exists(orphan)
    pred = tmp_path / "pred.txt"
    stale = tmp_path / f"pred.txt.tmp.{dead}"
    stale.write_text("half")
    other = tmp_path / f"other.txt.tmp.{dead}"  # another output's temporary file is not ours to remove
    other.write_text("half")
    assert main(["predict", copy, "--data", data, "--output", str(pred), "--quiet"]) == 0
    assert not stale.exists() and other.exists() and pred.exists()


def test_a_model_60_characters_wide_trains_cached_and_recomputed(tmp_path, capsys):
    """Issue 14 pt 5 on the task side: an original-format ELMo whose max_characters_per_token is 60
    (the task's batches and the layer cache used to build ids 50 wide: a size error). Training with
    the cache and without it (the biLM run on every batch) gives the same losses and dev F1; the
    cached layers are the model's own on 60-wide ids (a 70-byte word is seen past 48 bytes), and
    evaluate/predict of the saved folder (the biLM run again) score what training scored."""
    import numpy as np
    from conftest import make_tiny_config

    from elmo import ElmoBiLM, batch_to_ids, load_original, save_original
    from tasks.cache import LayerCache

    config = make_tiny_config()
    config.char_cnn.max_characters_per_token = 60
    torch.manual_seed(0)
    options, weights = str(tmp_path / "options.json"), str(tmp_path / "weights.hdf5")
    save_original(ElmoBiLM(config), options, weights)
    bilm = load_original(options, weights).eval()
    assert bilm.config.char_cnn.max_characters_per_token == 60
    long_word = "Llan" + "x" * 66  # 70 bytes: truncated to 58 + the word's begin and end marks
    data = ner_file(tmp_path / "train.txt", 6)
    with open(data, "a") as f:
        f.write(f"Ann B-PER\nwent O\nto O\n{long_word} B-LOC\n\n")

    sentence = ["Ann", "went", "to", long_word]
    cache = LayerCache(bilm, batch_size=2)
    cache.fill([sentence, ["Bob", "went", "to", "Oslo"]])
    with torch.no_grad():
        want = torch.stack(bilm(batch_to_ids([sentence], max_characters_per_token=60)).layers)[:, 0]
        cut = torch.stack(bilm(batch_to_ids([sentence[:3] + [long_word[:48]]], 60)).layers)[:, 0]
    torch.testing.assert_close(cache.get(sentence), want, atol=1e-6, rtol=0)
    assert (cache.get(sentence) - cut).abs().max() > 1e-4  # the characters past 48 bytes count

    runs = {}
    for name, extra in (("cached", []), ("recomputed", ["--set", "cache=none"])):
        out = str(tmp_path / name)
        capsys.readouterr()
        assert main(["train", "ner", "--train", data, "--dev", data, "--out", out, "--options-file", options,
                     "--weight-file", weights, "--epochs", "1", "--seed", "3", *extra, *SMALL]) == 0, \
            capsys.readouterr().err
        summary = json.loads(capsys.readouterr().out.strip())
        log = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
        runs[name] = (summary, log[0])
    (cached, cached_log), (recomputed, recomputed_log) = runs["cached"], runs["recomputed"]
    assert cached_log["bilm_calls"] == 0 and recomputed_log["bilm_calls"] == 4  # 2 train + 2 dev batches (7 sentences)
    assert np.isfinite(cached_log["train_loss"])
    assert recomputed_log["train_loss"] == pytest.approx(cached_log["train_loss"], abs=1e-5)
    assert recomputed["dev"] == pytest.approx(cached["dev"], abs=1e-9)

    out = str(tmp_path / "cached")
    assert ElmoBiLM.from_pretrained(os.path.join(out, "elmo")).config.char_cnn.max_characters_per_token == 60
    capsys.readouterr()
    assert main(["evaluate", out, "--data", data, "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["f1"] == pytest.approx(cached["dev"], abs=1e-9)
    assert main(["predict", out, "--data", data, "--output", str(tmp_path / "pred.txt"), "--quiet"]) == 0
    assert f"{long_word} B-LOC " in open(tmp_path / "pred.txt").read()
