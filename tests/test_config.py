"""Config errors name the key and the file; defaults make a small config work."""

from __future__ import annotations

import pytest

from slhmc.config import ConfigError, check_inputs, from_dict, load_config

from .conftest import ROOT


def test_example_config_loads_with_defaults():
    cfg = load_config(ROOT / "examples/cu32_emt/config.toml")
    assert cfg.system.temperature == 300.0 and cfg.reference.calculator == "emt"
    assert cfg.potential.hidden == [15, 15] and cfg.potential.activation == "tanh"
    check_inputs(cfg)


@pytest.mark.parametrize(
    "patch, key",
    [
        ({"hmc": {"timestep": -1.0}}, "hmc.timestep"),
        ({"hmc": {"trials": "many"}}, "hmc.trials"),
        ({"hmc": {"tirals": 3}}, "hmc.tirals"),
        ({"system": {"temperature": 0}}, "system.temperature"),
        ({"potential": {"hidden": [15, 0]}}, "potential.hidden"),
        ({"potential": {"activation": "relu"}}, "potential.activation"),
        ({"colour": {}}, "colour"),
    ],
)
def test_bad_values_name_their_key(patch, key, tmp_path):
    data = {"system": {"structure": str(ROOT / "examples/cu32_emt/cu32.xyz"), "temperature": 300.0},
            "reference": {"calculator": "emt"}}
    for section, values in patch.items():
        data.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(data, source="test.toml")


def test_missing_structure_and_unknown_calculator_are_reported(tmp_path):
    cfg = from_dict({"system": {"structure": "nowhere.xyz", "temperature": 300.0},
                     "reference": {"calculator": "emt"}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="nowhere.xyz"):
        check_inputs(cfg)
    cfg = from_dict({"system": {"structure": str(ROOT / "examples/cu32_emt/cu32.xyz"), "temperature": 300.0},
                     "reference": {"calculator": "vasp-but-misspelt"}})
    with pytest.raises(ConfigError, match="vasp-but-misspelt"):
        check_inputs(cfg)


def test_bad_toml_says_where(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[hmc]\ntrials = = 3\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(path)
