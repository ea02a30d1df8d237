"""The Python API: ``slhmc.run`` from a config dict with an ``ase.Atoms`` start structure, a real
run through the launcher of ``slhmc run``, ``slhmc.Run`` reading back what the files hold, resume
through the API, the refusals, and ``import slhmc`` staying cheap."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

import slhmc
from slhmc.api import CONFIG_FILE, START_FILE, _from_python
from slhmc.potential import load_calculator

from .conftest import ROOT
from .runs import check_run, env, read_trials

CU32 = ROOT / "examples/cu32_emt/cu32.xyz"


def config_dict(structure, trials: int) -> dict:
    """The fast Cu32 EMT config of tests/runs.py's write_config, built in Python."""
    return {
        "system": {"structure": structure, "temperature": 300.0},
        "reference": {"calculator": "emt"},
        "hmc": {"trials": trials, "md_steps": 5, "timestep": 2.0, "seed": 11},
        "potential": {"cutoff": 4.5, "hidden": [10, 10]},
        "training": {"bootstrap": 8, "interval": 12, "max_steps": 8},
        "workers": {"dft": 1, "heartbeat": 0.5, "timeout": 10.0},
    }


def test_import_slhmc_is_cheap():
    code = ("import sys, slhmc; print(sorted(m for m in ('torch', 'numpy', 'ase', 'pydantic', 'zmq', 'slhmc.api') "
            "if m in sys.modules)); print(sorted(n for n in slhmc.__all__ if not hasattr(slhmc, n)))")
    proc = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    heavy, missing = proc.stdout.splitlines()
    assert heavy == "[]"  # nothing heavy until a name is used
    assert missing == "[]"  # every name of __all__ resolves
    assert set(slhmc.__all__) == {"__version__", *slhmc._LAZY}


def test_typo_in_a_config_dict_is_the_toml_files_error(tmp_path):
    data = config_dict(read(CU32), trials=5)
    data["hmc"]["trails"] = 5
    with pytest.raises(slhmc.ConfigError) as from_dict:
        slhmc.run(data, out=tmp_path / "run")
    toml = tmp_path / "typo.toml"
    toml.write_text(f'[system]\nstructure = "{CU32}"\ntemperature = 300.0\n[hmc]\ntrails = 5\n')
    with pytest.raises(slhmc.ConfigError) as from_file:
        slhmc.run(toml, out=tmp_path / "run")
    assert "hmc.trails" in str(from_dict.value) and "trials" in str(from_dict.value)
    # the same lines after the first, which names the source (<dict> or the file)
    assert str(from_dict.value).splitlines()[1:] == str(from_file.value).splitlines()[1:]
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_config_written_into_the_run_directory(tmp_path):
    """Relative paths of a dict are the current directory's; the file written into the run directory
    names them absolutely (relative inside it), and reads back to the config validated."""
    out = tmp_path / "run"
    data = config_dict(str(CU32), trials=5)
    data["training"]["initial_dataset"] = str(CU32)  # any labelled file would do; only the path matters here
    cfg, text, atoms = _from_python(data, out, structure=None)
    assert atoms is None and text.startswith("# written by slhmc.run")
    written = tomllib.loads(text)
    assert written["system"]["structure"] == str(CU32) and written["training"]["initial_dataset"] == [str(CU32)]
    assert cfg.structure_path == CU32 and written["hmc"]["trials"] == 5

    # a Config object and an Atoms given as structure=: the structure goes to START_FILE, named relatively
    pydantic_cfg = slhmc.load_config(ROOT / "examples/cu32_emt/config.toml")
    cfg, text, atoms = _from_python(pydantic_cfg, out, structure=read(CU32))
    assert atoms is not None and tomllib.loads(text)["system"]["structure"] == START_FILE
    assert cfg.structure_path == out.resolve() / START_FILE
    assert cfg.model_dump(exclude={"base_dir", "system"}) == pydantic_cfg.model_dump(exclude={"base_dir", "system"})


def test_analyze_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        slhmc.analyze(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        slhmc.Run(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no finished trials"):
        slhmc.Run(tmp_path / "empty").summary()


@pytest.mark.slow
def test_run_from_a_dict_with_atoms_read_back_and_resumed(tmp_path):
    start = read(CU32)
    out = tmp_path / "run"
    run = slhmc.run(config_dict(start, trials=10), out=out, progress=False)
    assert isinstance(run, slhmc.Run) and run.path == out

    # self-contained: the start structure and the config are in the run directory
    stored = read(out / START_FILE)
    assert np.allclose(stored.positions, start.positions, atol=1e-8) and (stored.numbers == start.numbers).all()
    assert slhmc.load_config(out / CONFIG_FILE).structure_path == out / START_FILE
    check_run(out, trials=10, bootstrap=8)

    # Run reads what the files hold
    records = read_trials(out)
    assert run.trials == records
    columns = run.trial_arrays()
    assert columns["accepted"].tolist() == [r["accepted"] for r in records]
    assert np.array_equal(columns["e_chain"], [r["e_chain"] for r in records])
    chain, chain_file = run.chain, read(out / "chain.extxyz", index=":")
    assert len(chain) == 10
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(chain, chain_file, strict=True))
    assert [a.get_potential_energy() for a in chain] == pytest.approx([r["e_chain"] for r in records], abs=1e-9)
    dataset, dataset_file = run.dataset, read(out / "dataset.extxyz", index=":")
    assert len(dataset) == len(dataset_file)
    assert [a.get_potential_energy() for a in dataset] == [a.get_potential_energy() for a in dataset_file]
    versions = sorted(int(p.stem.split("_")[1]) for p in (out / "models").glob("model_*.safetensors"))
    assert run.model_versions == versions and versions[0] == 0
    assert run.metrics == [json.loads(x) for x in (out / "models/metrics.jsonl").read_text().splitlines()]
    assert [m["version"] for m in run.metrics] == versions
    assert run.config["hmc"]["trials"] == 10 and run.checkpoint["trial"] == 10
    atoms = chain[-1].copy()
    atoms.calc = run.calculator()  # the newest model, as load_calculator(run directory) gives it
    e_newest = atoms.get_potential_energy()
    atoms.calc = load_calculator(out)
    assert atoms.get_potential_energy() == e_newest
    atoms.calc = run.calculator(version=0)
    assert np.isfinite(atoms.get_potential_energy())
    summary = run.summary(plots=False)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["trials"] == 10 and summary["reference_calls"] == len(dataset)
    assert slhmc.analyze(out, plots=False)["acceptance"] == summary["acceptance"]

    # refused as `slhmc run` refuses them, before anything in the run directory changes
    before = {name: (out / name).read_bytes() for name in (START_FILE, CONFIG_FILE, "trials.jsonl")}
    with pytest.raises(slhmc.RunDirectoryError, match="already holds a run"):
        slhmc.run(config_dict(start, trials=10), out=out, progress=False)
    with pytest.raises(slhmc.RunDirectoryError, match="already holds a run"):
        slhmc.run(out / CONFIG_FILE, out=out, progress=False)
    moved = start.copy()
    moved.positions[0, 0] += 0.1
    with pytest.raises(slhmc.RunDirectoryError, match="start structure"):
        slhmc.run(config_dict(moved, trials=14), out=out, resume=True, progress=False)
    assert before == {name: (out / name).read_bytes() for name in before}

    # resume through the API with the run's own config as a pydantic Config, for more trials
    cfg = slhmc.load_config(out / CONFIG_FILE)
    cfg.hmc.trials = 14
    run = slhmc.run(cfg, out=out, resume=True, progress=False)
    check_run(out, trials=14, bootstrap=8)
    assert len(run.trials) == 14 and len(run.chain) == 14
    assert run.trials[:10] == records  # the first 10 trials are kept as they were
    assert tomllib.loads((out / CONFIG_FILE).read_text())["hmc"]["trials"] == 14
    assert (out / START_FILE).read_bytes() == before[START_FILE]


def test_resume_needs_a_run(tmp_path):
    with pytest.raises(slhmc.RunDirectoryError, match="no such run directory"):
        slhmc.run(config_dict(read(CU32), trials=5), out=tmp_path / "none", resume=True)
    assert not (tmp_path / "none").exists()
    assert Path(CU32).exists()
