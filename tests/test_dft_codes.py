"""Real quantum-chemistry references: our PySCF calculator against PySCF's own ASE calculator, a
short SLHMC chain with PySCF DFT through the real worker processes, and tblite (GFN2-xTB)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from ase.build import molecule

from slhmc.clients.calculators import make_calculator
from slhmc.clients.dft import DFTHandler

from .conftest import ROOT
from .test_end_to_end import env

pytest.importorskip("pyscf")


def water():
    a = molecule("H2O")
    a.rattle(0.03, seed=2)
    return a


def test_pyscf_calculator_equals_pyscfs_own_ase_calculator():
    from pyscf import dft, gto
    from pyscf.pbc.tools.pyscf_ase import PySCF

    atoms = water()
    ours = atoms.copy()
    ours.calc = make_calculator("pyscf", {"xc": "PBE", "basis": "def2-SVP"})
    f_ours, e_ours = ours.get_forces(), ours.get_potential_energy()

    mol = gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)],
                basis="def2-SVP", verbose=0)
    mf = dft.RKS(mol, xc="PBE")
    mf.conv_tol = 1e-9
    theirs = atoms.copy()
    theirs.calc = PySCF(method=mf)
    f_theirs = theirs.get_forces()
    assert e_ours == pytest.approx(theirs.get_potential_energy(), abs=1e-5)  # eV
    np.testing.assert_allclose(f_ours, f_theirs, atol=1e-4)  # eV/Å
    assert np.abs(f_ours).max() > 0.1  # rattled: real forces

    # warm restart: the next structure reuses the previous density and still gives the right answer
    moved = ours.copy()
    moved.positions[1] += [0.02, -0.01, 0.0]
    moved.calc = ours.calc
    theirs2 = moved.copy()
    theirs2.calc = PySCF(method=dft.RKS(mol.copy(), xc="PBE"))
    assert moved.get_potential_energy() == pytest.approx(theirs2.get_potential_energy(), abs=1e-5)


def test_unconverged_scf_is_a_failed_label_not_a_result():
    handler = DFTHandler({"calculator": "pyscf", "options": {"max_cycle": 2, "conv_tol": 1e-12}})
    handler.configure({})
    atoms = water()
    msg = {"type": "label_task", "numbers": atoms.numbers, "positions": atoms.positions,
           "cell": np.zeros((3, 3)), "pbc": np.zeros(3, bool)}
    with pytest.raises(Exception, match="did not converge"):
        handler.handle(msg)


def test_wrong_option_name_says_what_it_accepts():
    with pytest.raises(ValueError, match="xc"):
        make_calculator("pyscf", {"functional": "PBE"})


def test_tblite_reference():
    pytest.importorskip("tblite")
    atoms = water()
    atoms.calc = make_calculator("tblite", {})
    f = atoms.get_forces()
    e = atoms.get_potential_energy()
    d = 1e-4
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[0, 2] += d
    minus.positions[0, 2] -= d
    plus.calc = make_calculator("tblite", {})
    minus.calc = make_calculator("tblite", {})
    fd = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * d)
    assert f[0, 2] == pytest.approx(fd, abs=2e-3) and np.isfinite(e)


def test_short_slhmc_chain_with_pyscf_dft(tmp_path):
    """H2O at PBE/def2-SVP through the real server, ML-MD, trainer and DFT worker processes."""
    config = (ROOT / "examples/h2o_pyscf/config.toml").read_text()
    config = config.replace('structure = "h2o.xyz"', f'structure = "{ROOT / "examples/h2o_pyscf/h2o.xyz"}"')
    config = config.replace("trials = 200", "trials = 12").replace("bootstrap = 20", "bootstrap = 6")
    config = config.replace("interval = 20", "interval = 6").replace("md_steps = 20", "md_steps = 10")
    (tmp_path / "config.toml").write_text(config)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "slhmc", "run", str(tmp_path / "config.toml"), "--out", str(run),
                           "--no-progress"], env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = [json.loads(x) for x in (run / "trials.jsonl").read_text().splitlines()]
    assert [t["trial"] for t in trials] == list(range(12))
    assert all(t["dft_seconds"] > 0 for t in trials)
    assert all(abs(t["e_ref"] - trials[0]["e_ref"]) < 1.0 for t in trials)  # eV: one molecule, near minimum
    assert trials[0]["e_ref"] < -2000  # eV: a real all-electron water energy (about -2076 eV at PBE)
    assert np.mean([t["accepted"] for t in trials]) > 0.3
