"""The nested TaskConfig (task, data, elmo, head per task, train): the flat task_config.json of
earlier versions loads to the same config, --set takes old names and dotted paths, per-task heads
and defaults, unknown keys and bad values are errors that name the field."""

import json
import os

import pytest

from tasks.config import (FLAT_NAMES, ClassifyHead, NerHead, SrlHead, TaskConfig, apply_set, parse_set,
                          resolve_config)

# task_config.json files exactly as the flat TaskConfig of earlier versions wrote them
# (resolve_config("ner", {"hidden_dim": 8, "lr": 0.01, "use_elmo": False, "max_train": 7,
# "cache": "hdf5", "data_scheme": "bio", "elmo_source": "/x/elmo"}).to_dict(), and a classify one).
OLD_NER = {
    "task": "ner", "data_format": "auto", "tag_column": -1, "text_column": "text", "label_column": "label",
    "tokenizer": "whitespace", "max_tokens": 0, "max_train": 7, "max_eval": 0, "tag_scheme": "bioul",
    "data_scheme": "bio", "use_elmo": False, "elmo_source": "/x/elmo", "fine_tune": False,
    "do_layer_norm": False, "elmo_dropout": 0.0, "mix_l2": 0.1, "cache": "hdf5", "cache_file": "",
    "cache_dtype": "float32", "elmo_batch_size": 64, "word_dim": 100, "min_word_count": 2,
    "lowercase_words": False, "char_dim": 50, "char_filters": "1:16,2:32,3:64", "hidden_dim": 8,
    "num_lstm_layers": 2, "lstm_residual": False, "dropout": 0.5, "predicate_dim": 100, "mlp_dim": 200,
    "epochs": 20, "batch_size": 32, "lr": 0.01, "grad_clip": 5.0, "patience": 5, "seed": 0, "device": "cpu",
    "num_threads": 0, "progress": True}
OLD_CLASSIFY = {
    **OLD_NER, "task": "classify", "text_column": "1", "label_column": "0", "max_train": 0, "tag_scheme": "",
    "data_scheme": "", "use_elmo": True, "elmo_source": "", "elmo_dropout": 0.5, "cache": "memory",
    "hidden_dim": 300, "num_lstm_layers": 1, "dropout": 0.3, "mlp_dim": 16, "lr": 0.001}


def test_the_saved_layout_is_nested_by_concern():
    d = resolve_config("srl", {}).to_dict()
    assert list(d) == ["task", "data", "elmo", "head", "train"]
    assert set(d["head"]) == {"word_dim", "min_word_count", "lowercase_words", "char_dim", "char_filters",
                              "hidden_dim", "num_lstm_layers", "lstm_residual", "dropout", "predicate_dim"}
    assert set(d["train"]) == {"epochs", "batch_size", "lr", "grad_clip", "patience", "seed", "device",
                               "num_threads", "progress"}
    assert set(d["data"]) == {"format", "tag_column", "text_column", "label_column", "tokenizer", "max_tokens",
                              "max_train", "max_eval", "scheme"}
    assert set(d["elmo"]) == {"use", "source", "fine_tune", "do_layer_norm", "dropout", "mix_l2", "cache",
                              "cache_file", "cache_dtype", "batch_size"}
    # every flat field of earlier versions has a home, and every nested field an old name but mlp_dim's
    paths = {f"{s}.{k}" for s in ("data", "elmo", "train") for k in d[s]} | {f"head.{k}" for k in d["head"]}
    assert set(FLAT_NAMES) == set(OLD_NER) - {"task"}
    assert paths <= set(FLAT_NAMES.values())


@pytest.mark.parametrize("task, head, hidden, layers, residual, dropout, elmo_dropout", [
    ("ner", NerHead, 200, 2, False, 0.5, 0.0),
    ("srl", SrlHead, 300, 4, True, 0.1, 0.1),
    ("classify", ClassifyHead, 300, 1, False, 0.3, 0.5),
])
def test_each_task_has_its_head_and_defaults(task, head, hidden, layers, residual, dropout, elmo_dropout):
    cfg = resolve_config(task, {})
    assert type(cfg.head) is head
    h = cfg.head
    assert (h.hidden_dim, h.num_lstm_layers, h.lstm_residual, h.dropout) == (hidden, layers, residual, dropout)
    assert cfg.elmo.dropout == elmo_dropout
    assert TaskConfig(task=task) == cfg  # the constructor gives the task's defaults too
    assert TaskConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=f"head must be a {head.__name__} for task '{task}', got a "):
        TaskConfig(task=task, head=(SrlHead() if head is not SrlHead else NerHead()))


def test_a_flat_file_of_earlier_versions_loads_to_the_same_nested_config(tmp_path):
    path = tmp_path / "task_config.json"
    path.write_text(json.dumps(OLD_NER))
    cfg = TaskConfig.load(path)
    want = TaskConfig.from_dict({
        "task": "ner", "data": {"max_train": 7, "scheme": "bio"},
        "elmo": {"use": False, "source": "/x/elmo", "cache": "hdf5"},
        "head": {"hidden_dim": 8}, "train": {"lr": 0.01}})
    assert cfg == want
    assert (cfg.head.hidden_dim, cfg.train.lr, cfg.elmo.use, cfg.data.max_train) == (8, 0.01, False, 7)
    assert (cfg.elmo.source, cfg.elmo.cache, cfg.data.scheme, cfg.head.tag_scheme) == ("/x/elmo", "hdf5", "bio",
                                                                                      "bioul")
    # saved again, it is the nested layout, and reads back equal
    cfg.save(path)
    assert sorted(json.loads(path.read_text())) == ["data", "elmo", "head", "task", "train"]
    assert TaskConfig.load(path) == want
    # classify: tag_scheme "" and the other heads' fields (predicate_dim) had no effect and go
    path.write_text(json.dumps(OLD_CLASSIFY))
    cfg = TaskConfig.load(path)
    assert type(cfg.head) is ClassifyHead and cfg.head.mlp_dim == 16 and cfg.head.hidden_dim == 300
    assert (cfg.data.text_column, cfg.data.label_column, cfg.elmo.dropout) == ("1", "0", 0.5)
    assert cfg == resolve_config("classify", {"data": {"text_column": "1", "label_column": "0"},
                                              "head": {"mlp_dim": 16}})


def test_a_model_folder_with_a_flat_config_still_evaluates(tmp_path, capsys):
    from tasks.cli import main
    from test_task_cli import SMALL, ner_file

    data, out = ner_file(tmp_path / "train.txt", 6), str(tmp_path / "m")
    assert main(["train", "ner", "--train", data, "--dev", data, "--out", out, "--no-elmo", "--epochs", "1",
                 *SMALL]) == 0
    capsys.readouterr()
    assert main(["evaluate", out, "--data", data, "--json", "--quiet"]) == 0
    scores = json.loads(capsys.readouterr().out)
    nested = json.load(open(os.path.join(out, "task_config.json")))
    flat = {"task": "ner", **{old: nested[path.split(".")[0]][path.split(".")[1]]
                              for old, path in FLAT_NAMES.items() if path.split(".")[1] in
                              nested[path.split(".")[0]]}}
    assert flat["hidden_dim"] == 8 and flat["use_elmo"] is False and "mlp_dim" not in flat
    with open(os.path.join(out, "task_config.json"), "w") as f:
        json.dump({**flat, "mlp_dim": 8, "predicate_dim": 4}, f)  # as an earlier version wrote it
    assert main(["evaluate", out, "--data", data, "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out) == scores


def test_config_file_flat_or_nested_then_set_then_flags(tmp_path, capsys):
    from tasks.cli import _parser, _config

    flat, nested = tmp_path / "flat.json", tmp_path / "nested.json"
    flat.write_text(json.dumps({"lr": 0.05, "hidden_dim": 16, "epochs": 3, "mlp_dim": 4}))
    nested.write_text(json.dumps({"train": {"lr": 0.05, "epochs": 3}, "head": {"hidden_dim": 16}}))
    common = ["train", "ner", "--train", "t", "--dev", "d", "--out", "o", "--no-elmo"]
    a = _config(_parser().parse_args([*common, "--config", str(flat)]))
    b = _config(_parser().parse_args([*common, "--config", str(nested)]))
    assert a == b and (a.train.lr, a.head.hidden_dim, a.train.epochs, a.elmo.use) == (0.05, 16, 3, False)
    # --set (old name or path) over the file, the flags over --set
    c = _config(_parser().parse_args([*common, "--config", str(flat), "--set", "lr=0.5", "--set",
                                      "head.hidden_dim=4", "--set", "train.epochs=9", "--epochs", "2",
                                      "--threads", "1", "--batch-size", "3", "--seed", "5", "--quiet"]))
    assert (c.train.lr, c.head.hidden_dim, c.train.epochs) == (0.5, 4, 2)
    assert (c.train.num_threads, c.train.batch_size, c.train.seed, c.train.progress) == (1, 3, 5, False)
    d = _config(_parser().parse_args(["train", "srl", "--train", "t", "--dev", "d", "--out", "o", "--model", "m",
                                      "--fine-tune", "--device", "cuda:1", "--set", "device=cpu"]))
    assert (d.elmo.use, d.elmo.fine_tune, d.train.device, d.head.hidden_dim) == (True, True, "cuda:1", 300)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": {"lrr": 1}}))
    with pytest.raises(ValueError, match=r"config.train: unknown key\(s\) \['lrr'\] for TaskTrainConfig; "
                                         r"valid keys: \['batch_size', 'device', 'epochs', 'grad_clip', 'lr', "):
        _config(_parser().parse_args([*common, "--config", str(bad)]))


def test_old_names_and_dotted_paths_set_the_same_field():
    for old, path in FLAT_NAMES.items():
        value = {"tag_scheme": "bio", "data_scheme": "bio", "tokenizer": "simple", "cache": "none",
                 "cache_dtype": "float16", "char_filters": "1:2", "device": "meta", "data_format": "csv",
                 "text_column": "t", "label_column": "l", "elmo_source": "s", "cache_file": "c.h5"}.get(old)
        if value is None:
            value = "false" if old in ("use_elmo", "progress") else "true" if old in (
                "fine_tune", "do_layer_norm", "lowercase_words", "lstm_residual") else "0.25" if old in (
                "dropout", "elmo_dropout", "mix_l2", "lr", "grad_clip") else "3"
        task = "classify" if old == "mlp_dim" else "srl" if old == "predicate_dim" else "ner"
        by_name = resolve_config(task, parse_set([f"{old}={value}"], task))
        by_path = resolve_config(task, parse_set([f"{path}={value}"], task))
        assert by_name == by_path, old
        section, name = path.split(".")
        assert getattr(getattr(by_name, section), name) != getattr(getattr(resolve_config(task, {}), section),
                                                                   name), old  # it did change something


def test_fields_of_another_tasks_head():
    # an old flat name of another head is accepted and ignored (shared flags for every task) ...
    assert parse_set(["mlp_dim=8", "predicate_dim=4", "hidden_dim=5"], "ner") == {"head": {"hidden_dim": 5}}
    assert resolve_config("ner", {"mlp_dim": 8}) == resolve_config("ner", {})
    # ... a path is not: the head of that task has no such field
    with pytest.raises(ValueError, match=r"--set head.mlp_dim: unknown field 'mlp_dim' \(there is no field "
                                         r"'mlp_dim' in head, the ner head\); valid fields: \['char_dim'"):
        parse_set(["head.mlp_dim=8"], "ner")
    with pytest.raises(ValueError, match=r"config.head: unknown key\(s\) \['predicate_dim'\] for ClassifyHead"):
        resolve_config("classify", {"head": {"predicate_dim": 4}})


@pytest.mark.parametrize("data, message", [
    ({"hiden_dim": 3}, r"config: unknown key 'hiden_dim'; valid keys: \['task', 'data.format', .*'head.hidden_dim'"
                       r".*or a flat name of earlier versions: \[.*'hidden_dim'"),
    ({"model": {}}, r"unknown key 'model'"),
    ({"train": 3}, r"config.train: expected a JSON object \(a section\), got int"),
    ({"head": {"hidden_dim": 0}}, r"head.hidden_dim must be a positive integer, got 0"),
    ({"head": {"char_filters": "3"}}, r"head.char_filters must look like '1:25,2:50'"),
    ({"head": {"tag_scheme": "bilou"}}, r"head.tag_scheme must be one of \['iob1', 'bio', 'bioul'\], got 'bilou'"),
    ({"train": {"batch_size": 0}}, r"train.batch_size must be a positive integer, got 0"),
    ({"train": {"num_threads": -1}}, r"train.num_threads must be an integer >= 0, got -1"),
    ({"elmo": {"cache_dtype": "int8"}}, r"elmo.cache_dtype must be one of \['float32', 'float16'\], got 'int8'"),
    ({"elmo": {"dropout": 1.0}}, r"elmo.dropout must be in \[0, 1\), got 1.0"),
    ({"elmo_batch_size": 0}, r"elmo.batch_size must be a positive integer, got 0"),
    ({"data": {"tokenizer": "spacy"}}, r"data.tokenizer must be one of \['whitespace', 'punct', 'simple'\]"),
    ({"data_format": "xml"}, r"data.format must be one of \['auto', 'conll2003'"),
    ({"task": "pos"}, r"task must be one of \['ner', 'srl', 'classify'\], got 'pos'"),
])
def test_bad_keys_and_values_name_the_field(data, message):
    with pytest.raises(ValueError, match=message):
        TaskConfig.from_dict({"task": "ner", **data})


def test_set_errors_name_what_was_typed():
    with pytest.raises(ValueError, match=r"--set hidden_dim: 'x' is not a valid int|head.hidden_dim must be"):
        apply_set({}, "ner", "hidden_dim=x")
    with pytest.raises(ValueError, match=r"--set train.lr: 'abc' is not a valid float"):
        apply_set({}, "ner", "train.lr=abc")
    with pytest.raises(ValueError, match=r"--set head: head is a section; set one of its fields: \['char_dim'"):
        apply_set({}, "ner", "head=3")
