import json

import pytest

from elmo import ElmoBiLM
from elmo.config import BiLMConfig, CharCNNConfig, ElmoConfig, preset


def test_json_round_trip(tmp_path, tiny_config):
    path = tmp_path / "c.json"
    tiny_config.save(path)
    assert ElmoConfig.load(path) == tiny_config
    assert ElmoConfig.from_dict(json.loads(path.read_text())).to_dict() == tiny_config.to_dict()


def test_unknown_key_lists_valid_keys(tiny_config):
    data = tiny_config.to_dict()
    data["bilm"]["hidden"] = 3
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['hidden'\].*valid keys: .*'projection_dim'"):
        ElmoConfig.from_dict(data)


def test_bad_values_name_the_field():
    with pytest.raises(ValueError, match="BiLMConfig.projection_dim"):
        BiLMConfig(projection_dim=0)
    with pytest.raises(ValueError, match="activation must be one of"):
        CharCNNConfig(activation="gelu")
    with pytest.raises(ValueError, match="filters width 60"):
        CharCNNConfig(filters=[[60, 3]])


def test_original_options_round_trip():
    cfg = preset("original")
    options = cfg.to_options()
    assert options["lstm"] == {"dim": 4096, "projection_dim": 512, "n_layers": 2, "cell_clip": 3.0,
                               "proj_clip": 3.0, "use_skip_connections": True}
    assert options["char_cnn"]["filters"][-1] == [7, 1024]
    assert ElmoConfig.from_options(options) == cfg


def test_training_options_with_261_characters_load_as_262():
    options = preset("small").to_options()
    options["char_cnn"]["n_characters"] = 261
    assert ElmoConfig.from_options(options).char_cnn.n_characters == 262


def test_missing_options_key_is_explained():
    with pytest.raises(ValueError, match="missing the key 'char_cnn'"):
        ElmoConfig.from_options({"lstm": {}})


def test_original_size_has_93_6_million_parameters():
    n = sum(p.numel() for p in ElmoBiLM(preset("original")).parameters())
    assert n == 93_600_864


def test_unknown_preset():
    with pytest.raises(ValueError, match="valid presets: original, medium, small, tiny"):
        preset("huge")
