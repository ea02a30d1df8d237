"""The shipped examples a user copies (their own ``module:function`` factory, VASP), the DFT
worker's own ``--config`` with only ``[reference]``, where a factory's module is looked for,
``slhmc codes``' pointer to the install script, and ``slhmc md``'s input checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ase.io import read

from slhmc.clients.dft import DFTHandler
from slhmc.clients.references import CalculatorConfigError, add_config_dir, make_calculator
from slhmc.clients.references.status import install_hint
from slhmc.config import ConfigError, check_inputs, load_config, load_local_reference

from .conftest import ROOT
from .runs import SLHMC, env, free_port, start_server, start_worker, stop_all, wait_for_success

OWN = ROOT / "examples" / "own_calculator"
VASP = ROOT / "examples" / "vasp"


def _copy_own_example(folder: Path, trials: int) -> Path:
    """The own-calculator example in ``folder`` (not on PYTHONPATH), shortened to ``trials`` trials."""
    shutil.copytree(OWN, folder)
    config = folder / "config.toml"
    text = config.read_text()
    for old, new in (("trials = 150", f"trials = {trials}"), ("bootstrap = 20", "bootstrap = 6"),
                     ("interval = 30", "interval = 0"), ("hidden = [15, 15]", "hidden = [8, 8]")):
        assert old in text, f"{old!r} is no longer in {OWN / 'config.toml'}: update this test"
        text = text.replace(old, new)
    config.write_text(text)
    return config


def _elsewhere(tmp_path: Path) -> Path:
    """A working directory that is neither the example's folder nor on PYTHONPATH (``python -m``
    would put its working directory on sys.path)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return cwd


def _no_mycalc_on_pythonpath(environment: dict) -> None:
    for entry in filter(None, environment.get("PYTHONPATH", "").split(":")):
        assert not (Path(entry) / "mycalc.py").exists()


def test_own_calculator_example_runs_from_a_folder_not_on_pythonpath(tmp_path):
    """``calculator = "mycalc:morse_copper"`` with mycalc.py next to the config, and nothing on
    PYTHONPATH: the config check of ``slhmc run`` and the DFT worker both find it there."""
    config = _copy_own_example(tmp_path / "example", trials=6)
    environment = env()
    _no_mycalc_on_pythonpath(environment)
    run = tmp_path / "run"
    proc = subprocess.run([*SLHMC, "run", str(config), "--out", str(run), "--no-progress"], env=environment,
                          cwd=_elsewhere(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [r for r in (run / "trials.jsonl").read_text().splitlines() if r]
    assert len(records) == 6
    # the labels are the factory's Morse energies with the config's parameters
    sys.path.insert(0, str(OWN))
    try:
        from mycalc import morse_copper
    finally:
        sys.path.remove(str(OWN))
    dataset = read(run / "dataset.extxyz", index=":")
    for atoms in dataset[:3]:
        expected = atoms.get_potential_energy()
        atoms.calc = morse_copper(depth=0.3429, alpha=1.3588, cutoff=5.5)
        assert atoms.get_potential_energy() == pytest.approx(expected, abs=1e-6)


def test_dft_worker_with_a_config_of_only_reference(tmp_path):
    """A DFT worker's ``--config`` with only ``[reference]``, in a folder with no structure file,
    naming a factory whose module lies next to it: the worker labels the server's chain."""
    server_dir = tmp_path / "server"
    config = _copy_own_example(server_dir, trials=8)
    worker_dir = tmp_path / "worker"  # another machine's folder: no structure, no server config
    worker_dir.mkdir()
    shutil.copy(OWN / "mycalc.py", worker_dir / "mycalc.py")
    local = worker_dir / "dft_local.toml"
    local.write_text('[reference]\ncalculator = "mycalc:morse_copper"\n'
                     "[reference.options]\ndepth = 0.3429\nalpha = 1.3588\ncutoff = 5.5\n")
    assert load_local_reference(local).reference.calculator == "mycalc:morse_copper"
    (server_dir / "mycalc.py").unlink()  # only the worker's copy can be imported
    address = f"tcp://127.0.0.1:{free_port()}"
    run = tmp_path / "run"
    server = start_server(config, run, address)
    workers = {}
    try:
        for role in ("mlmd", "trainer"):
            workers[role] = start_worker(role, role, address)
        workers["dft"] = subprocess.Popen([*SLHMC, "worker", "dft", "--connect", address, "--name", "dft",
                                           "--config", str(local)], env=env(), cwd=_elsewhere(tmp_path),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_success(server, run)
    finally:
        stop_all(server, workers)
    assert len([r for r in (run / "trials.jsonl").read_text().splitlines() if r]) == 8


def test_local_reference_loader(tmp_path):
    """Only [reference] is needed; typos still name the key (and the file); a full run config loads too."""
    only = tmp_path / "ref.toml"
    only.write_text('[reference]\ncalculator = "emt"\ntimeout = 30.0\n')
    cfg = load_local_reference(only)
    assert cfg.reference.calculator == "emt" and cfg.reference.timeout == 30.0 and cfg.system is None
    assert Path(cfg.base_dir) == tmp_path.resolve()
    # a full run config (what `slhmc run` passes to its workers) loads too, without reading its structure
    full = load_local_reference(ROOT / "examples" / "cu32_emt" / "config.toml")
    assert full.reference.calculator == "emt" and full.system.structure == "cu32.xyz"
    moved = tmp_path / "full.toml"
    moved.write_text((ROOT / "examples" / "cu32_emt" / "config.toml").read_text())  # cu32.xyz not there
    assert load_local_reference(moved).hmc.trials == 300
    with pytest.raises(ConfigError, match="system.structure"):  # where a server needs it, it is still checked
        check_inputs(load_config(moved))
    for text, key in (('[reference]\ncalculater = "emt"\n', "reference.calculater"),
                      ('[referenc]\ncalculator = "emt"\n', "referenc"),
                      ('[reference]\nretries = -1\n', "reference.retries"),
                      ('[reference]\ncalculator = "emtt"\n', "emtt"),
                      ('[reference]\ncalculator = "lj"\n[reference.options]\nsigam = 1.0\n',
                       "reference.options.sigam")):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_local_reference(bad)
        assert key in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_local_reference(tmp_path / "nope.toml")


def test_worker_cli_refuses_a_bad_local_config(tmp_path):
    bad = tmp_path / "dft_local.toml"
    bad.write_text('[reference]\ncalculater = "emt"\n')
    proc = subprocess.run([*SLHMC, "worker", "dft", "--connect", "tcp://127.0.0.1:9", "--config", str(bad),
                           "--max-idle", "1"], env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "reference.calculater" in proc.stderr and str(bad) in proc.stderr


def _fresh_module_name(tmp_path: Path, stem: str) -> str:
    """A module name nothing has imported yet in this process."""
    name = f"{stem}_{abs(hash(str(tmp_path))) % 10**8}"
    assert name not in sys.modules
    return name


def _write_factory(folder: Path, module: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(
        "from ase.calculators.lj import LennardJones\n\n"
        "def lj(sigma: float = 2.3, epsilon: float = 0.4):\n"
        "    return LennardJones(sigma=sigma, epsilon=epsilon, rc=6.0)\n")


def test_factory_module_is_found_next_to_the_config(tmp_path):
    """The rule (clients.references.add_config_dir), in the config check and on the DFT worker."""
    module = _fresh_module_name(tmp_path, "ownfactory")
    folder = tmp_path / "cfg"
    _write_factory(folder, module)
    saved = list(sys.path)
    try:
        name = f"{module}:lj"
        with pytest.raises(CalculatorConfigError, match="PYTHONPATH"):
            make_calculator(name, {})  # no config folder given: not found
        assert add_config_dir("emt", folder) is None and add_config_dir(name, tmp_path / "absent") is None
        # the config check of `slhmc run` (DFT workers on this machine): imports it, checks option names
        (folder / "cu32.xyz").write_text((ROOT / "examples" / "cu32_emt" / "cu32.xyz").read_text())
        config = folder / "config.toml"
        config.write_text(f'[system]\nstructure = "cu32.xyz"\ntemperature = 300.0\n[reference]\n'
                          f'calculator = "{name}"\n[reference.options]\nsigam = 2.0\n')
        with pytest.raises(ConfigError, match="reference.options.sigam"):
            check_inputs(load_config(config), local_reference=True)
        assert sys.path[-1] == str(folder.resolve())  # appended: installed packages keep precedence
        # the DFT worker: the server's config folder (welcome's base_dir) ...
        handler = DFTHandler()
        handler.configure({"reference": {"calculator": name, "options": {"sigma": 2.0}}, "base_dir": str(folder)})
        assert handler.config_error is None and handler.calc.parameters["sigma"] == 2.0
        # ... or, with its own --config, that file's folder
        other = tmp_path / "worker"
        module2 = _fresh_module_name(tmp_path, "ownfactory_worker")
        _write_factory(other, module2)
        handler = DFTHandler({"calculator": f"{module2}:lj", "options": {}}, str(other))
        handler.configure({"reference": {"calculator": name, "options": {}}, "base_dir": str(folder)})
        assert handler.config_error is None and handler.calc.parameters["epsilon"] == 0.4
    finally:
        sys.path[:] = saved


def test_dft_worker_refuses_an_unconverged_scf():
    """A calculator that says its SCF did not converge (ASE's Vasp sets ``converged``) fails the task."""
    from ase.build import bulk

    from slhmc.clients.references import SCFNotConverged

    handler = DFTHandler()
    handler.configure({"reference": {"calculator": "emt", "options": {}}})
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    msg = {"type": "label_task", "numbers": atoms.numbers, "positions": atoms.positions, "cell": atoms.cell.array,
           "pbc": atoms.pbc}
    assert handler.handle(msg)[0] == "label_result"
    handler.calc.converged = False  # what ASE's Vasp sets after an SCF that ran out of iterations
    with pytest.raises(SCFNotConverged, match="did not converge"):
        handler.handle(msg)


@pytest.mark.filterwarnings("ignore:Loaded VASP_PP_PATH from environment")  # ASE's config file would do too
def test_vasp_example_passes_the_config_check(tmp_path, monkeypatch):
    """No VASP here: the config is valid, and its options reach INCAR and KPOINTS as intended."""
    cfg = load_config(VASP / "config.toml")
    check_inputs(cfg)
    check_inputs(cfg, local_reference=True)
    assert cfg.reference.calculator == "vasp"
    readme = (VASP / "README.md").read_text()
    assert "ASE_VASP_COMMAND" in readme and "VASP_PP_PATH" in readme
    # a stand-in POTCAR, enough for ASE to write the inputs
    (tmp_path / "pp" / "potpaw_PBE" / "Si").mkdir(parents=True)
    (tmp_path / "pp" / "potpaw_PBE" / "Si" / "POTCAR").write_text("stand-in\n")
    monkeypatch.setenv("VASP_PP_PATH", str(tmp_path / "pp"))
    options = {**cfg.reference.options, "directory": str(tmp_path / "run")}
    calc = make_calculator("vasp", options)
    atoms = read(cfg.structure_path)
    (tmp_path / "run").mkdir()
    calc.initialize(atoms)
    calc.write_incar(atoms, str(tmp_path / "run"))
    calc.write_kpoints(atoms, str(tmp_path / "run"))
    incar = dict(line.split(" = ") for line in (tmp_path / "run" / "INCAR").read_text().splitlines() if " = " in line)
    assert float(incar["ENCUT"]) == 300.0 and incar["ISMEAR"] == "0" and incar["ISYM"] == "0"
    assert incar["LREAL"] == ".FALSE." and float(incar["EDIFF"]) == 1e-6
    assert (tmp_path / "run" / "KPOINTS").read_text().split("\n")[2:4] == ["Gamma", "2 2 2"]


def test_codes_points_to_the_install_script():
    assert install_hint([]) is None
    hint = install_hint(["cp2k", "gpaw", "vasp"])
    assert "run_scripts/install_dft_codes.sh --with-gpaw" in hint and "cp2k, gpaw:" in hint
    assert "vasp: set ASE_VASP_COMMAND" in hint  # not installable by the script: the code's own advice
    assert Path(hint.split(" run ")[1].split()[0]).is_file()  # the path printed exists in a checkout
    out = subprocess.run([*SLHMC, "codes"], env=env(), capture_output=True, text=True, timeout=120).stdout
    if "missing" in out.split("\n\n")[0]:
        assert "install_dft_codes.sh" in out or "vasp: set ASE_VASP_COMMAND" in out


@pytest.mark.parametrize("case", ["structure", "model", "elements", "steps"])
def test_md_input_errors_leave_no_output_folder(tmp_path, case, model):
    from ase.build import bulk
    from ase.io import write

    from slhmc.md import run_md
    from slhmc.potential.serialization import save_model

    model_file = tmp_path / "model.safetensors"
    save_model(model_file, model)  # Ni and Cu
    structure = tmp_path / "cu.xyz"
    write(structure, bulk("Cu", "fcc", a=3.61, cubic=True))
    kwargs = {"model": str(model_file), "structure": str(structure), "steps": 10}
    if case == "structure":
        kwargs["structure"], error = str(tmp_path / "cu108.xyz"), FileNotFoundError
    elif case == "model":
        kwargs["model"], error = str(tmp_path / "runs" / "cu32"), FileNotFoundError
    elif case == "elements":
        write(structure, bulk("Al", "fcc", a=4.05, cubic=True))
        error = ValueError
    else:
        kwargs["steps"], error = -1, ValueError
    out = tmp_path / "md"
    with pytest.raises(error) as err:
        run_md(kwargs["model"], kwargs["structure"], 300.0, kwargs["steps"], 2.0, str(out), progress=False,
               device="cpu")
    assert not out.exists()
    if case == "elements":
        assert "Al" in str(err.value)


def test_md_cli_missing_structure(tmp_path):
    out = tmp_path / "md"
    proc = subprocess.run([*SLHMC, "md", str(tmp_path / "run"), "--structure", str(tmp_path / "cu108.xyz"),
                           "--temperature", "300", "--steps", "10", "--out", str(out)], env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "cu108.xyz does not exist" in proc.stderr
    assert not out.exists()


def test_cu108_example_structure():
    """README's md example starts from examples/cu32_emt/cu108.xyz: the crystal of cu32.xyz, 3x3x3 cells."""
    cu108, cu32 = read(ROOT / "examples/cu32_emt/cu108.xyz"), read(ROOT / "examples/cu32_emt/cu32.xyz")
    assert len(cu108) == 108 and set(cu108.get_chemical_symbols()) == {"Cu"}
    assert cu108.cell.lengths() == pytest.approx(1.5 * cu32.cell.lengths())
    assert cu108.get_all_distances(mic=True)[0][1:].min() == pytest.approx(3.61 / 2**0.5, abs=1e-6)


def test_cu_npt_example_configs():
    """examples/cu_npt: three NPT configs at 0 GPa, 300/600/900 K, sharing one structure; each passes
    the config check of `slhmc run` and of a DFT worker."""
    folder = ROOT / "examples" / "cu_npt"
    temperatures = []
    for config in sorted(folder.glob("config_*K.toml")):
        cfg = load_config(config)
        check_inputs(cfg)
        check_inputs(cfg, local_reference=True)
        assert cfg.npt and cfg.system.pressure == 0.0 and cfg.hmc.cell == "isotropic"
        assert cfg.system.structure == "cu32.xyz" and config.name == f"config_{cfg.system.temperature:.0f}K.toml"
        assert cfg.hmc.volume_adapt_until < cfg.hmc.trials // 2  # most of each run is averaged
        temperatures.append(cfg.system.temperature)
    assert sorted(temperatures) == [300.0, 600.0, 900.0]
    atoms = read(folder / "cu32.xyz")
    assert len(atoms) == 32 and set(atoms.get_chemical_symbols()) == {"Cu"}
