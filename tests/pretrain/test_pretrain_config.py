import json

import pytest

from elmo.config import preset
from pretrain.config import PretrainConfig, pretrain_preset


def test_defaults_follow_the_original_training_setup():
    c = PretrainConfig()
    assert (c.data.window, c.data.batch_mode, c.data.batch_size) == (20, "window", 128)
    assert (c.softmax.kind, c.softmax.num_samples) == ("sampled", 8192)
    assert (c.optim.optimizer, c.optim.lr, c.optim.adagrad_initial_accumulator) == ("adagrad", 0.2, 1.0)
    assert (c.optim.clip_norm, c.optim.dropout, c.optim.loss_normalization) == (10.0, 0.1, "row")


def test_json_round_trip(tmp_path):
    c = pretrain_preset("small").with_override("optim.lr=0.05")
    c.save(tmp_path / "c.json")
    back = PretrainConfig.load(tmp_path / "c.json")
    assert back == c
    assert back.model == preset("small")
    assert back.optim.lr == 0.05


def test_dotted_overrides_reach_nested_fields():
    c = PretrainConfig().with_override("model.bilm.dim=256").with_override("data.tokenizer=punct")
    c = c.with_override("train.max_tokens=1000").with_override("optim.clip_value=null")
    assert c.model.bilm.dim == 256 and c.data.tokenizer == "punct"
    assert c.train.max_tokens == 1000 and c.optim.clip_value is None


def test_unknown_keys_and_fields_are_rejected_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"no field 'lrr'.*valid fields: \[.*'lr'"):
        PretrainConfig().with_override("optim.lrr=1")
    data = PretrainConfig().to_dict()
    data["data"]["windw"] = 3
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['windw'\].*valid keys"):
        PretrainConfig.from_dict(data)
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        PretrainConfig().with_override("optim.lr")


@pytest.mark.parametrize("assignment, message", [
    ("softmax.kind=hierarchical", r"softmax.kind must be one of \['sampled', 'full', 'adaptive'\]"),
    ("data.window=0", "data.window must be a number >= 1"),
    ("data.window=abc", "data.window must be a number >= 1"),
    ("optim.dropout=1.5", r"optim.dropout must be in \[0, 1\)"),
    ("train.precision=fp8", "train.precision must be one of"),
])
def test_bad_values_name_the_field(assignment, message):
    with pytest.raises(ValueError, match=message):
        PretrainConfig().with_override(assignment)


def test_exactly_one_budget():
    c = PretrainConfig()
    with pytest.raises(ValueError, match="exactly one training budget.*got none"):
        c.train.budget()
    c = c.with_override("train.max_steps=5")
    assert c.train.budget() == ("max_steps", 5)
    with pytest.raises(ValueError, match="got max_tokens, max_steps"):
        c.with_override("train.max_tokens=9").train.budget()


def test_tiny_preset_is_the_model_preset_plus_training_settings():
    c = pretrain_preset("tiny")
    assert c.model == preset("tiny")
    assert json.loads(json.dumps(c.to_dict())) == c.to_dict()
    with pytest.raises(ValueError, match="valid presets"):
        pretrain_preset("huge")
