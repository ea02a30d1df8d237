"""Starting a run from a model and labelled frames one already has (potential.initial_model,
training.initial_dataset); what --resume refuses (a changed config that changes what the chain
means) and what it allows (more trials: a deterministic resumed run equals an uninterrupted
one); no refit is started that no trial could use. Real processes, EMT Cu32, a few trials."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write

from slhmc.config import ConfigError, check_inputs, load_config
from slhmc.server.outputs import CONFIG_RECORD

from .runs import SLHMC, check_run, env, free_port, read_trials, without_timings, write_config


def deterministic_config(tmp_path: Path, trials: int, name: str = "config.toml", **training) -> Path:
    """Cu32 EMT, 5 x 2 fs, refit every 3 labels, deterministic: small enough for ~10 s a run."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_config(tmp_path, trials=trials, **{"bootstrap": 4, "interval": 3, "max_steps": 6, **training})
    path.write_text(path.read_text().replace("seed = 11", "seed = 11\ndeterministic = true"))
    return path.rename(tmp_path / name)


def slhmc_run(config: Path, run: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SLHMC, "run", str(config), "--out", str(run), "--no-progress", *args], env=env(),
                          capture_output=True, text=True, timeout=300)


def weights(path: Path) -> dict[str, bytes]:
    from safetensors.torch import load

    return {k: v.numpy().tobytes() for k, v in load(path.read_bytes()).items()}


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "models" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    """A finished deterministic run of 6 trials (refits due at trials 3 and 6)."""
    base = tmp_path_factory.mktemp("source")
    run = base / "run"
    proc = slhmc_run(deterministic_config(base, trials=6), run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_config_json_and_no_refit_after_the_last_trial(source_run):
    check_run(source_run, trials=6, bootstrap=4)
    record = json.loads((source_run / CONFIG_RECORD).read_text())
    assert record["config"]["hmc"]["timestep"] == 2.0 and record["config"]["system"]["temperature"] == 300.0
    # model 1 after trial 3; the refit due after trial 6 was not requested: no trial could use it
    assert [m["version"] for m in metrics(source_run)] == [0, 1]
    ckpt = json.loads((source_run / "checkpoint.json").read_text())
    assert ckpt["pending_train"] is None and ckpt["labels_since_fit"] == 3
    assert {r["model"] for r in read_trials(source_run)} == {0, 1}


def test_resume_refuses_a_changed_chain_before_anything_starts(source_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(source_run, run)

    def contents() -> dict[str, bytes]:  # server.log aside: `slhmc server` opens it before its checks
        return {str(p): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "server.log"}

    before = contents()
    config = deterministic_config(tmp_path, trials=9)
    text = config.read_text().replace("timestep = 2.0", "timestep = 3.0")
    config.write_text(text.replace('calculator = "emt"', 'calculator = "emt"\n[reference.options]\nasap_cutoff = true'))
    for command in ("run", "server"):
        proc = subprocess.run([*SLHMC, command, str(config), "--out", str(run), "--resume", "--no-progress"],
                              env=env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "hmc.timestep: 2.0 -> 3.0" in proc.stderr  # the key, old and new value
        assert "reference.options.asap_cutoff" in proc.stderr
        assert "hmc.trials" not in proc.stderr  # may change
    assert contents() == before  # no output and no worker log was touched: nothing started


@pytest.mark.parametrize("damage", ["model file missing", "dataset truncated"])
def test_resume_of_a_damaged_run_is_one_line_and_exit_2(source_run, tmp_path, damage):
    """A run directory whose files disagree with its checkpoint: the server says which file, in one
    line, exits 2, and leaves the directory (and the port) as it found them."""
    run = tmp_path / "run"
    shutil.copytree(source_run, run)
    if damage == "model file missing":
        (run / "models" / "model_0001.safetensors").unlink()
    else:
        frames = read(run / "dataset.extxyz", index=":")
        write(run / "dataset.extxyz", frames[:-2])
    config = deterministic_config(tmp_path, trials=9)
    address = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.run([*SLHMC, "server", str(config), "--out", str(run), "--resume", "--no-progress",
                           "--bind", address], env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "cannot resume" in proc.stderr
    assert ("model_0001.safetensors" if damage == "model file missing" else "dataset.extxyz") in proc.stderr


def test_resume_with_more_trials_equals_an_uninterrupted_run(source_run, tmp_path):
    """hmc.trials may change on resume. The refit that was due after the last trial (and not
    started) is requested when the resumed run starts, so a deterministic 6 + 3 trial run equals
    a 9-trial run to the last bit, refits included."""
    run = tmp_path / "resumed"
    shutil.copytree(source_run, run)
    config = deterministic_config(tmp_path, trials=9)
    proc = slhmc_run(config, run, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = tmp_path / "reference"
    proc = slhmc_run(config, reference)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = check_run(run, trials=9, bootstrap=4)
    assert without_timings(records) == without_timings(read_trials(reference))
    assert (run / "dataset.extxyz").read_bytes() == (reference / "dataset.extxyz").read_bytes()
    ours = sorted(p.name for p in (run / "models").glob("*.safetensors"))
    assert ours == sorted(p.name for p in (reference / "models").glob("*.safetensors"))
    for name in ours:  # the same networks (the files differ in the fit's wall time they record)
        assert weights(run / "models" / name) == weights(reference / "models" / name)
    assert (run / CONFIG_RECORD).read_bytes() == (source_run / CONFIG_RECORD).read_bytes()  # the start config, kept


def test_run_from_initial_model_and_dataset(source_run, tmp_path):
    """Model 0 is the given model, byte for byte; the given frames are the first labels and are
    in every fit; refits warm-start from the given model, whose form wins over [potential]."""
    frames = read(source_run / "dataset.extxyz", index=":")[:7]
    write(tmp_path / "part1.traj", frames[:3])  # any ase.io format
    write(tmp_path / "part2.extxyz", frames[3:])
    config = deterministic_config(tmp_path, trials=4, bootstrap=0,
                                  initial_dataset='["part1.traj", "part2.extxyz"]')
    text = config.read_text().replace("hidden = [10, 10]", f'hidden = [7]\ninitial_model = "{source_run}"')
    config.write_text(text)
    run = tmp_path / "run"
    proc = slhmc_run(config, run)
    assert proc.returncode == 0, proc.stderr[-3000:]

    dataset = read(run / "dataset.extxyz", index=":")
    assert [a.info["source"] for a in dataset[:8]] == ["initial"] * 7 + ["start"]
    for given, label in zip(frames, dataset[:7], strict=True):
        assert label.get_potential_energy() == given.get_potential_energy()
        assert np.array_equal(label.get_forces(), given.get_forces())
    newest = sorted((source_run / "models").glob("model_*.safetensors"))[-1]
    assert (run / "models" / "model_0000.safetensors").read_bytes() == newest.read_bytes()
    records = read_trials(run)
    assert [r["trial"] for r in records] == list(range(4)) and records[0]["model"] == 0
    fits = metrics(run)
    assert "initial_model" in fits[0] and [m["version"] for m in fits] == [0, 1]
    # model 1: fitted after trial 3 on the 7 given frames, the start structure and 3 trial labels
    assert fits[1]["warm_start"] and fits[1]["train"]["n"] + fits[1]["validation"]["n"] == 7 + 1 + 3
    from slhmc.potential.serialization import load_model

    model1, _ = load_model(run / "models" / "model_0001.safetensors")
    source, _ = load_model(newest)
    assert model1.hyperparameters() == source.hyperparameters()  # hidden [10, 10], not the config's [7]


def labelled_cu(path: Path, forces: bool = True, element: str = "Cu") -> Path:
    atoms = bulk(element, "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = EMT()
    atoms.get_potential_energy()
    if not forces:
        atoms.calc.results.pop("forces")
    write(path, atoms)
    return path


@pytest.mark.parametrize("case, key", [
    ("missing dataset file", "training.initial_dataset"),
    ("frame without forces", "training.initial_dataset"),
    ("frame with another element", "training.initial_dataset"),
    ("missing model", "potential.initial_model"),
    ("run directory without models", "potential.initial_model"),
    ("not a model", "potential.initial_model"),
    ("model without the structure's element", "potential.initial_model"),
])
def test_bad_initial_inputs_name_key_and_file(case, key, tmp_path):
    from slhmc.potential.descriptors import DescriptorSpec
    from slhmc.potential.network import BPNN
    from slhmc.potential.serialization import save_model

    config = write_config(tmp_path)
    text = config.read_text()
    name = {"missing dataset file": "nowhere.extxyz", "missing model": "nowhere.safetensors",
            "run directory without models": "empty_run", "not a model": "junk.safetensors"}.get(case)
    if case == "frame without forces":
        name = labelled_cu(tmp_path / "energy_only.extxyz", forces=False).name
    elif case == "frame with another element":
        name = labelled_cu(tmp_path / "ni.extxyz", element="Ni").name
    elif case == "run directory without models":
        (tmp_path / name / "models").mkdir(parents=True)
    elif case == "not a model":
        (tmp_path / name).write_bytes(b"\x08" + bytes(40))
    elif case == "model without the structure's element":
        name = "ni_model.safetensors"
        save_model(tmp_path / name, BPNN(DescriptorSpec.default([28], cutoff=4.5), hidden=(4,), activation="tanh"))
    if key == "training.initial_dataset":
        text = text.replace("[training]", f'[training]\ninitial_dataset = "{name}"')
    else:
        text = text.replace("hidden = [10, 10]", f'hidden = [10, 10]\ninitial_model = "{name}"')
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        check_inputs(load_config(config))
    assert f"\n  {key}: " in str(err.value) and name in str(err.value) and str(config) in str(err.value)


def test_bad_initial_dataset_refused_before_any_process(tmp_path):
    config = write_config(tmp_path)
    labelled_cu(tmp_path / "energy_only.extxyz", forces=False)
    config.write_text(config.read_text().replace("[training]", '[training]\ninitial_dataset = ["energy_only.extxyz"]'))
    proc = slhmc_run(config, tmp_path / "run")
    assert proc.returncode == 2 and "training.initial_dataset" in proc.stderr and "energy_only.extxyz" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_bootstrap_zero_needs_an_initial_model_or_dataset(tmp_path):
    config = write_config(tmp_path, bootstrap=0)
    with pytest.raises(ConfigError, match="training.bootstrap"):
        load_config(config)


def test_refit_in_progress_at_the_end_is_not_waited_for(tmp_path):
    """The trainer dies after model 0, so the refit requested after trial 3 can never finish:
    the server ends the run when the last trial is done (it used to wait, for up to 600 s for a
    trainer or 30 s without one); the checkpoint keeps the refit for a resume with more trials."""
    import signal
    import time

    from .runs import free_port, start_server, start_workers, stop_all, wait_for_success, wait_for_trials

    config = write_config(tmp_path, trials=6, bootstrap=4, interval=3, max_steps=6, timeout=2.0)
    run, address = tmp_path / "run", f"tcp://127.0.0.1:{free_port()}"
    server = start_server(config, run, address)
    workers = start_workers(address, [("mlmd", "m"), ("trainer", "t"), ("dft", "d")])
    try:
        deadline = time.monotonic() + 120
        while not (run / "models" / "model_0000.safetensors").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        workers["t"].send_signal(signal.SIGKILL)
        wait_for_trials(run, 6)
        last_trial = time.monotonic()
        wait_for_success(server, run)
        assert time.monotonic() - last_trial < 10
    finally:
        stop_all(server, workers)
    check_run(run, trials=6, bootstrap=4)
    ckpt = json.loads((run / "checkpoint.json").read_text())
    assert ckpt["pending_train"]["version"] == 1 and [m["version"] for m in metrics(run)] == [0]
