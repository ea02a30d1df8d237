"""The α-quartz example (examples/sio2_quartz): the shipped cells are quartz, its config shape runs
end to end through real processes with tblite (GFN1-xTB), and the checks that the wrong quartz
cell and a misspelt tblite option slipped through before: option names and start structures."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.io import read
from ase.neighborlist import neighbor_list
from ase.spacegroup import crystal

from slhmc.clients.dft import DFTHandler
from slhmc.clients.references import CalculatorConfigError, accepted_options, make_calculator
from slhmc.config import ConfigError, check_inputs, load_config
from slhmc.structure import StructureError, check_structure, structure_summary

from .conftest import ROOT
from .runs import env

EXAMPLE = ROOT / "examples/sio2_quartz"


def coordination(atoms: Atoms, cutoff: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per atom: neighbours within ``cutoff``; and every pair's element numbers and distance."""
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    return np.bincount(i, minlength=len(atoms)), np.stack([atoms.numbers[i], atoms.numbers[j]], 1), d


@pytest.mark.parametrize("name, n_atoms", [("quartz9.extxyz", 9), ("quartz72.extxyz", 72)])
def test_shipped_quartz_cells_have_corner_sharing_tetrahedra(name, n_atoms):
    atoms = read(EXAMPLE / name)
    assert len(atoms) == n_atoms and atoms.pbc.all()
    symbols = np.asarray(atoms.get_chemical_symbols())
    assert (symbols == "Si").sum() * 2 == (symbols == "O").sum() == n_atoms * 2 // 3
    neighbours, pairs, d = coordination(atoms)
    assert np.all(neighbours[symbols == "Si"] == 4) and np.all(neighbours[symbols == "O"] == 2)
    assert np.all(pairs[:, 0] != pairs[:, 1])  # within 2 Å only Si–O: no Si–Si, no O–O
    assert 1.60 <= d.min() and d.max() <= 1.62
    # the experimental cell (Levien et al. 1980), as make_quartz.py builds it
    a, c = (4.916, 5.405) if n_atoms == 9 else (9.832, 10.810)
    np.testing.assert_allclose(atoms.cell.cellpar(), [a, a, c, 90, 90, 120], atol=1e-9)


def test_make_quartz_rebuilds_the_shipped_cell():
    spec = importlib.util.spec_from_file_location("make_quartz", EXAMPLE / "make_quartz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built, shipped = module.quartz(), read(EXAMPLE / "quartz9.extxyz")
    assert list(built.numbers) == list(shipped.numbers)
    np.testing.assert_allclose(built.positions, shipped.positions, atol=1e-7)
    # the same call with the coordinates in the other origin setting gives the wrong Si6O6 cell,
    # which the script's own check refuses
    wrong = crystal(["Si", "O"], basis=[(0.4697, 0, 0), (0.4135, 0.2669, 0.1191)], spacegroup=154,
                    cellpar=[4.916, 4.916, 5.405, 90, 90, 120])
    assert wrong.get_chemical_formula() == "O6Si6"
    with pytest.raises(AssertionError):
        module.check_quartz(wrong)


# -- reference option names -------------------------------------------------------------------------


def test_tblite_misspelt_option_is_an_error_that_lists_the_accepted_names():
    tblite_ase = pytest.importorskip("tblite.ase")
    with pytest.raises(CalculatorConfigError, match=r"reference\.options\.methd") as err:
        make_calculator("tblite", {"methd": "GFN1-xTB"})
    message = str(err.value)
    assert "did you mean 'method'" in message
    for name in tblite_ase.TBLite.default_parameters:  # the accepted names come from tblite itself
        assert name in message
    assert accepted_options("tblite") == sorted(tblite_ase.TBLite.default_parameters)
    # spelt right, the option reaches tblite (before, methd= silently ran GFN2-xTB)
    assert make_calculator("tblite", {"method": "GFN1-xTB"}).parameters["method"] == "GFN1-xTB"


def test_pyscf_misspelt_option_is_an_error_that_lists_the_accepted_names():
    # needs only our module: pyscf itself is imported at the first calculation
    with pytest.raises(CalculatorConfigError, match=r"reference\.options\.bassis \(did you mean 'basis'\?\)") as err:
        make_calculator("pyscf", {"xc": "PBE", "bassis": "def2-SVP"})
    for name in ("basis", "charge", "conv_tol", "max_cycle", "spin", "xc"):
        assert name in str(err.value)
    assert "xc" not in str(err.value).split(":")[0]  # only the wrong key is named as wrong


def test_other_builtins_and_factories_check_names_where_they_can():
    with pytest.raises(CalculatorConfigError, match=r"reference\.options\.asap_cutof .*asap_cutoff"):
        make_calculator("emt", {"asap_cutof": True})
    with pytest.raises(CalculatorConfigError, match=r"reference\.options\.sigam"):
        make_calculator("lj", {"sigam": 2.0})
    with pytest.raises(CalculatorConfigError, match=r"reference\.options\.clinet"):
        make_calculator("socket", {"clinet": "pw.x"})
    with pytest.raises(CalculatorConfigError, match=r"reference\.options\.delay .*delay_s"):
        make_calculator("slhmc.validation:delayed_emt", {"delay": 0.1})  # a user's module:function
    assert make_calculator("lj", {"sigma": 2.0, "epsilon": 0.1}).parameters["sigma"] == 2.0
    # codes whose options pass on to ASE's own keyword sets are judged by the code, not here
    assert accepted_options("espresso") is None and accepted_options("vasp") is None


def write_config(tmp_path: Path, options: str, structure: Path = EXAMPLE / "quartz9.extxyz",
                 calculator: str = "tblite") -> Path:
    path = tmp_path / "quartz.toml"
    path.write_text(f'[system]\nstructure = "{structure}"\ntemperature = 300.0\n'
                    f'[reference]\ncalculator = "{calculator}"\n[reference.options]\n{options}\n')
    return path


@pytest.mark.parametrize("local_reference", [True, False])  # slhmc run; slhmc server on its own
def test_config_check_names_the_misspelt_option_and_the_file(tmp_path, local_reference):
    pytest.importorskip("tblite.ase")
    cfg = load_config(write_config(tmp_path, 'methd = "GFN1-xTB"'))
    with pytest.raises(ConfigError, match=r"(?s)quartz\.toml.*reference\.options\.methd.*electronic_temperature"):
        check_inputs(cfg, local_reference)
    check_inputs(load_config(write_config(tmp_path, 'method = "GFN1-xTB"')), local_reference)
    cfg = load_config(write_config(tmp_path, 'xc = "PBE"\nfunctional = "PBE"', calculator="pyscf"))
    with pytest.raises(ConfigError, match=r"(?s)quartz\.toml.*reference\.options\.functional"):
        check_inputs(cfg, local_reference)


def test_slhmc_run_refuses_a_misspelt_option_before_anything_starts(tmp_path):
    pytest.importorskip("tblite.ase")
    config = write_config(tmp_path, 'methd = "GFN1-xTB"')
    proc = subprocess.run([sys.executable, "-m", "slhmc", "run", str(config), "--out", str(tmp_path / "run")],
                          env=env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "reference.options.methd" in proc.stderr and "quartz.toml" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_dft_worker_refuses_a_misspelt_option_with_the_same_message():
    pytest.importorskip("tblite.ase")
    handler = DFTHandler({"calculator": "tblite", "options": {"methd": "GFN1-xTB"}})
    handler.configure({})
    assert handler.calc is None and "reference.options.methd" in handler.config_error
    atoms = read(EXAMPLE / "quartz9.extxyz")
    msg = {"type": "label_task", "numbers": atoms.numbers, "positions": atoms.positions,
           "cell": atoms.cell.array, "pbc": atoms.pbc}
    with pytest.raises(Exception, match=r"reference\.options\.methd"):  # reported to the server, run stops
        handler.handle(msg)


# -- start structure ---------------------------------------------------------------------------------


def test_overlapping_atoms_are_refused_by_the_config_check(tmp_path):
    atoms = read(EXAMPLE / "quartz9.extxyz")
    atoms.positions[4] = atoms.positions[0] + [0.3, 0.0, 0.0]  # an O on top of a Si
    atoms.write(tmp_path / "overlap.extxyz")
    cfg = load_config(write_config(tmp_path, "", structure=tmp_path / "overlap.extxyz", calculator="emt"))
    with pytest.raises(ConfigError, match=r"(?s)quartz\.toml.*system\.structure.*overlap\.extxyz.*0\.300 Å"):
        check_inputs(cfg)
    with pytest.raises(StructureError, match="own periodic image"):  # a cell far too small
        check_structure(Atoms("H", cell=[0.3, 5.0, 5.0], pbc=True))


@pytest.mark.parametrize("path", ["examples/cu32_emt/cu32.xyz", "examples/h2o_pyscf/h2o.xyz",
                                  "examples/si8_espresso/si8.xyz", "examples/sio2_quartz/quartz72.extxyz"])
def test_legitimate_structures_pass(path):
    check_structure(read(ROOT / path))


def test_summary_shows_formula_and_shortest_distances():
    assert structure_summary(read(EXAMPLE / "quartz9.extxyz")).startswith("Si3O6, 9 atoms, cell 4.916 x 4.916 x 5.405")
    assert "O-O 2.612, O-Si 1.605, Si-Si 3.058" in structure_summary(read(EXAMPLE / "quartz9.extxyz"))
    # the wrong quartz cell is not refused (no overlap), but its summary gives it away: Si6O6, Si–Si 1.80 Å
    wrong = crystal(["Si", "O"], basis=[(0.4697, 0, 0), (0.4135, 0.2669, 0.1191)], spacegroup=154,
                    cellpar=[4.916, 4.916, 5.405, 90, 90, 120])
    check_structure(wrong)
    assert structure_summary(wrong).startswith("Si6O6, 12 atoms") and "Si-Si 1.802" in structure_summary(wrong)
    water = structure_summary(molecule("H2O"))
    assert water.startswith("OH2, 3 atoms, no periodic cell") and "H-O 0.969" in water and "O-O > 5" in water
    squeezed = Atoms("Si2", positions=[[0, 0, 0], [1.2, 0, 0]], cell=[8, 8, 8], pbc=True)
    assert "Si-Si 1.200 SHORT" in structure_summary(squeezed)


# -- the example's config shape end to end -----------------------------------------------------------


@pytest.mark.slow
def test_quartz_example_runs_end_to_end_with_tblite(tmp_path):
    """examples/sio2_quartz/config.toml as shipped (GFN1-xTB, 20 × 0.25 fs, 2 × 15 networks) on the
    9-atom cell with few trials, through the real server, ML-MD, trainer and DFT worker processes."""
    tblite_ase = pytest.importorskip("tblite.ase")
    text = (EXAMPLE / "config.toml").read_text()
    assert 'method = "GFN1-xTB"' in text and "md_steps = 20" in text and "timestep = 0.25" in text
    text = text.replace('structure = "quartz72.extxyz"', f'structure = "{EXAMPLE / "quartz9.extxyz"}"')
    text = text.replace("trials = 400", "trials = 6")
    text = text.replace("interval = 100", "interval = 3\nbootstrap = 4")
    (tmp_path / "config.toml").write_text(text)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "slhmc", "run", str(tmp_path / "config.toml"), "--out", str(run),
                           "--no-progress"], env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = [json.loads(x) for x in (run / "trials.jsonl").read_text().splitlines()]
    assert [t["trial"] for t in trials] == list(range(6))  # every trial once, in order
    dataset = read(run / "dataset.extxyz", index=":")
    assert [a.info["label_id"] for a in dataset] == list(range(len(dataset)))
    assert len([a for a in dataset if a.info["source"] != "speculative"]) == 1 + 4 + 6
    assert all(len(a) == 9 and a.get_chemical_formula() == "O6Si3" for a in dataset)
    # the chain's energies are GFN1-xTB's, recomputed here with tblite directly
    calc = tblite_ase.TBLite(method="GFN1-xTB", verbosity=0)
    for t in (trials[0], trials[-1]):
        frame = dataset[t["label_id"]]
        assert frame.get_potential_energy() == pytest.approx(t["e_ref"], abs=1e-6)
        forces, atoms = frame.get_forces(), frame.copy()
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(t["e_ref"], abs=1e-5)  # eV; positions to 1e-8 Å
        np.testing.assert_allclose(atoms.get_forces(), forces, atol=2e-4)  # eV/Å: SCF tolerance, warm vs cold start
    assert len(list((run / "models").glob("model_*.safetensors"))) >= 2  # refits every 3 labels
