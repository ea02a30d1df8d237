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
        ({"system": {"pressure": "high"}}, "system.pressure"),
        ({"hmc": {"cell": "cubic"}}, "hmc.cell"),
        ({"hmc": {"volume_probability": 1.0}}, "hmc.volume_probability"),
        ({"hmc": {"volume_step": 0.0}}, "hmc.volume_step"),
        ({"training": {"stress_weight": -1.0}}, "training.stress_weight"),
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


def test_trainer_settings_come_from_the_config_and_travel_in_the_train_task():
    import dataclasses

    import numpy as np

    from slhmc.config import trainer_settings
    from slhmc.protocol import build, parse

    data = {"system": {"structure": "x.xyz", "temperature": 300.0}, "hmc": {"seed": 11},
            "potential": {"cutoff": 5.0, "hidden": [7, 5], "activation": "silu"},
            "training": {"max_steps": 9, "patience": 2, "force_atoms": 4, "full_force_mb": 1.5}}
    cfg = from_dict(data)
    fit, arch = trainer_settings(cfg.potential, cfg.training, cfg.hmc.seed)
    assert (fit.max_steps, fit.patience, fit.force_atoms, fit.full_force_mb, fit.seed) == (9, 2, 4, 1.5, 11)
    assert fit.force_weight == cfg.training.force_weight  # unset keys: the config's defaults
    assert (arch.cutoff, arch.angular_cutoff, arch.hidden, arch.activation) == (5.0, 4.5, (7, 5), "silu")
    assert trainer_settings(cfg.potential.model_copy(update={"angular_cutoff": 3.0}), cfg.training, 0)[1] \
        .angular_cutoff == 3.0

    # every field of both records crosses the wire and comes back the same
    task = parse(build("train_task", task_id=1, version=2, label_ids=np.arange(3), warm_start=False, model=None,
                       **cfg.train_task_fields()))
    assert task["fit"] == dataclasses.asdict(fit)
    assert type(arch)(**task["architecture"]) == arch and type(fit)(**task["fit"]) == fit


def test_npt_needs_a_periodic_right_handed_structure_and_at_most_20_dft_workers_while_adapting(tmp_path):
    from ase import Atoms
    from ase.io import write

    write(tmp_path / "molecule.xyz", Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]]))
    cfg = from_dict({"system": {"structure": "molecule.xyz", "temperature": 300.0, "pressure": 1.0}},
                    base_dir=tmp_path)
    with pytest.raises(ConfigError, match="system.pressure: NPT needs a structure periodic"):
        check_inputs(cfg)
    write(tmp_path / "left.xyz", Atoms("Cu", cell=[[0, 3, 0], [3, 0, 0], [0, 0, 3]], pbc=True))
    cfg = from_dict({"system": {"structure": "left.xyz", "temperature": 300.0, "pressure": 1.0},
                     "hmc": {"cell": "anisotropic"}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="left-handed"):
        check_inputs(cfg)
    npt = {"system": {"structure": "x.xyz", "temperature": 300.0, "pressure": 0.0}}
    with pytest.raises(ConfigError, match="volume_adapt_until"):
        from_dict({**npt, "workers": {"dft": 21}})
    assert from_dict({**npt, "workers": {"dft": 21}, "hmc": {"volume_adapt_until": 0}}).npt
    assert not from_dict({"system": {"structure": "x.xyz", "temperature": 300.0}}).npt
