"""One ``--set`` implementation (elmo.config.set_field) for elmo-pretrain and elmo-task: both
dialects (dotted JSON-ish paths and flat task fields) parse to the field's type."""

import pytest

from elmo.config import ElmoConfig, set_field
from pretrain.config import PretrainConfig
from tasks.config import TaskConfig, apply_set, parse_set


def test_pretraining_paths_and_values():
    c = PretrainConfig()
    c = c.with_override("optim.lr=1").with_override("model.char_cnn.filters=[[1,4],[2,8]]")
    c = c.with_override("data.tokenizer=punct").with_override('train.device="cuda:1"')
    c = c.with_override("train.epochs=2").with_override("optim.clip_norm=null")
    c = c.with_override("data.streaming=yes").with_override("data.text_field=123")
    assert c.optim.lr == 1.0 and isinstance(c.optim.lr, float)
    assert c.model.char_cnn.filters == [[1, 4], [2, 8]]
    assert (c.data.tokenizer, c.train.device, c.train.epochs) == ("punct", "cuda:1", 2.0)
    assert c.optim.clip_norm is None and c.data.streaming is True
    assert c.data.text_field == "123"  # a string field keeps the text


def test_task_fields_and_values():
    assert parse_set(["lr=0.002", "use_elmo=false", "fine_tune=yes", "max_train=1000", "label_column=0",
                      "char_filters=1:4,2:4", "cache_file="]) == {
        "train": {"lr": 0.002}, "elmo": {"use": False, "fine_tune": True, "cache_file": ""},
        "data": {"max_train": 1000, "label_column": "0"}, "head": {"char_filters": "1:4,2:4"}}
    # the dotted paths give the same
    assert parse_set(["train.lr=0.002", "elmo.use=false", "elmo.fine_tune=yes", "data.max_train=1000",
                      "data.label_column=0", "head.char_filters=1:4,2:4", "elmo.cache_file="]) == \
        parse_set(["lr=0.002", "use_elmo=false", "fine_tune=yes", "max_train=1000", "label_column=0",
                   "char_filters=1:4,2:4", "cache_file="])
    assert TaskConfig().with_override("hidden_dim=64").head.hidden_dim == 64
    assert TaskConfig().with_override("head.hidden_dim=64").head.hidden_dim == 64


@pytest.mark.parametrize("cls, data, assignment, message", [
    (TaskConfig, {}, "lr=abc", r"--set lr: 'abc' is not a valid float"),
    (TaskConfig, {}, "use_elmo=maybe", r"--set use_elmo: 'maybe' is not a valid bool"),
    (TaskConfig, {}, "epochs=1.5", r"epochs must be a positive integer, got 1.5"),  # the config's own check
    (TaskConfig, {}, "hiden_dim=3", r"unknown field 'hiden_dim'.*valid fields: \[.*'hidden_dim'"),
    (PretrainConfig, PretrainConfig().to_dict(), "data.window=abc", "data.window must be a number >= 1"),
    (PretrainConfig, PretrainConfig().to_dict(), "optim.lrr=1", r"no field 'lrr' in optim\).*'lr'"),
    (PretrainConfig, PretrainConfig().to_dict(), "optim=1", r"optim is a section; set one of its fields"),
    (PretrainConfig, PretrainConfig().to_dict(), "optim.lr.x=1", r"optim.lr is a value, not a section"),
    (ElmoConfig, ElmoConfig().to_dict(), "bilm.dim", r"--set expects FIELD=VALUE"),
])
def test_errors_name_the_field(cls, data, assignment, message):
    with pytest.raises(ValueError, match=message):
        if cls is TaskConfig:  # the task config's --set: set_field plus the flat names and the head's class
            apply_set(data, "ner", assignment)
        else:
            set_field(cls, data, assignment)


def test_one_set_of_value_checks_for_every_config():
    from elmo.config import BiLMConfig, CharCNNConfig, check_at_least, check_choice, check_fraction

    with pytest.raises(ValueError, match=r"x must be one of \['a', 'b'\], got 'c'"):
        check_choice("x", "c", ("a", "b"))
    for value in (0, 1.5, True, "3"):
        with pytest.raises(ValueError, match=r"n must be a positive integer, got"):
            check_at_least("n", value, 1, integer=True)
    with pytest.raises(ValueError, match=r"r must be a number >= 0.5, got 0.25"):
        check_at_least("r", 0.25, 0.5)
    check_at_least("r", None, 0.5)  # an optional field left unset
    for value in (-0.1, 1.0, "0.5"):
        with pytest.raises(ValueError, match=r"p must be in \[0, 1\), got"):
            check_fraction("p", value)
    # the model, pretraining and task configs all answer through them
    with pytest.raises(ValueError, match=r"char_cnn.n_highway must be an integer >= 0, got -1"):
        CharCNNConfig(n_highway=-1)
    with pytest.raises(ValueError, match=r"BiLMConfig.n_layers must be a positive integer, got 0"):
        BiLMConfig(n_layers=0)
    with pytest.raises(ValueError, match=r"optim.dropout must be in \[0, 1\), got 1.0"):
        PretrainConfig().with_override("optim.dropout=1.0")
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        TaskConfig.from_dict({"dropout": 1.0})
    with pytest.raises(ValueError, match=r"cache must be one of \['memory', 'hdf5', 'none'\], got 'disk'"):
        TaskConfig.from_dict({"cache": "disk"})
