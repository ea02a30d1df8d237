"""Real quantum-chemistry references: our PySCF calculator against PySCF's own ASE calculator, a
short SLHMC chain with PySCF DFT through the real worker processes, and tblite (GFN2-xTB)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule

from slhmc.clients.dft import DFTHandler
from slhmc.clients.references import make_calculator

from .conftest import ROOT
from .runs import env

pytest.importorskip("pyscf")


def fd_force(atoms, calc, atom: int, axis: int, d: float) -> float:
    """-dE/dx by central differences, with the same calculator (the same warm code process)."""
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[atom, axis] += sign * d
        moved.calc = calc
        energies.append(moved.get_potential_energy())
    return -(energies[0] - energies[1]) / (2 * d)


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
    assert f[0, 2] == pytest.approx(fd_force(atoms, atoms.calc, 0, 2, 1e-4), abs=2e-3) and np.isfinite(e)


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


def test_socket_bridge_with_ipi_python_driver(tmp_path):
    """The i-PI bridge against i-PI's own Python driver (pip ipi), a client nobody here wrote:
    its harmonic mode has E = k/2 Σ x² and F = -k x in atomic units."""
    import os
    import shutil

    from ase import Atoms, units

    # installed with the test extra (pip ipi), next to this interpreter
    driver = shutil.which("i-pi-py_driver", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                                  os.environ.get("PATH", "")]))
    assert driver, "i-pi-py_driver not found: pip install ipi (the test extra has it)"
    k = 0.05  # Hartree/Bohr²
    calc = make_calculator("socket", {"client": f"{driver} -u -a {{unixsocket}} -m harmonic -o {k}",
                                      "unixsocket": f"slhmc-test-{os.getpid()}", "timeout": 60})
    try:
        atoms = Atoms("H2O", positions=[[0.1, 0.0, 0.2], [0.9, 0.3, -0.1], [-0.4, 0.7, 0.0]],
                      cell=[10, 10, 10], pbc=True)
        pids = []
        for shift in (0.0, 0.05, -0.03):
            a = atoms.copy()
            a.positions += shift
            a.calc = calc
            forces = a.get_forces()
            x_bohr = a.positions / units.Bohr
            assert a.get_potential_energy() == pytest.approx(0.5 * k * np.sum(x_bohr**2) * units.Hartree, rel=1e-9)
            np.testing.assert_allclose(forces, -k * x_bohr * units.Hartree / units.Bohr, rtol=1e-9)
            pids.append(calc.proc.pid)
        assert len(set(pids)) == 1  # one client for all calls: it stays alive
        proc = calc.proc
    finally:
        calc.close()
    assert proc.poll() is not None  # EXIT was sent: the driver is gone, not spinning


def si2():
    from ase.build import bulk

    a = bulk("Si", "diamond", a=5.43)
    a.positions[1] += [0.04, -0.02, 0.03]
    return a


ESPRESSO = {"pseudopotentials": {"Si": "Si.pz-vbc.UPF"}, "kpts": [2, 2, 2],
            "input_data": {"system": {"ecutwfc": 12.0}, "electrons": {"conv_thr": 1e-9}}}


def test_espresso_fresh_and_through_the_socket_agree():
    import shutil

    if shutil.which("pw.x") is None:
        pytest.skip("pw.x not installed (run_scripts/install_dft_codes.sh)")
    fresh_calc = make_calculator("espresso", ESPRESSO)
    bridge = make_calculator("socket", {"client": "pw.x -in {input} --ipi {unixsocket}:UNIX", "code": "espresso",
                                        "espresso": ESPRESSO, "timeout": 120})
    pids = []
    try:
        for shift in (0.0, 0.05):  # the second structure goes to the same, warm pw.x
            fresh, sock = si2(), si2()
            for a in (fresh, sock):
                a.positions[0] += [shift, 0.0, -shift]
            fresh.calc, sock.calc = fresh_calc, bridge
            f_fresh, f_sock = fresh.get_forces(), sock.get_forces()
            assert np.abs(f_fresh).max() > 0.1
            assert sock.get_potential_energy() == pytest.approx(fresh.get_potential_energy(), abs=1e-4)
            np.testing.assert_allclose(f_sock, f_fresh, atol=2e-3)
            pids.append(bridge.proc.pid)
        assert pids[0] == pids[1]
    finally:
        bridge.close()


def test_an_npt_run_gets_pw_x_stress_without_asking():
    """A DFT worker of an NPT run turns on pw.x's stress (tstress) itself; the label carries it,
    equal to ASE's Espresso asked for it explicitly; an NVT run's worker does not ask."""
    import shutil

    from slhmc.protocol import structure_fields

    if shutil.which("pw.x") is None:
        pytest.skip("pw.x not installed (run_scripts/install_dft_codes.sh)")
    atoms = si2()
    atoms.set_cell(atoms.cell * 0.98, scale_atoms=True)  # compressed: a clear, negative stress
    task = {"type": "label_task", **structure_fields(atoms), "stress": True}
    results = {}
    for pressure in (None, 1.0):
        handler = DFTHandler()
        handler.configure({"reference": {"calculator": "espresso", "options": ESPRESSO},
                           "system": {"pressure": pressure}})
        try:
            results[pressure] = handler.handle(task)[1]
        finally:
            handler.close()
    assert results[None]["stress"] is None  # not asked for: no stress in pw.x's output
    stress = results[1.0]["stress"]
    assert stress.shape == (6,) and stress[:3].max() < -1e-3  # eV/Å³, ASE's sign: compressed
    explicit = make_calculator("espresso", {**ESPRESSO, "tstress": True})
    try:
        atoms.calc = explicit
        np.testing.assert_allclose(stress, atoms.get_stress(voigt=True), atol=1e-6)
    finally:
        explicit.close()
    assert results[1.0]["energy"] == pytest.approx(results[None]["energy"], abs=1e-6)


def test_espresso_errors_say_what_to_fix():
    import shutil

    from slhmc.clients.references import CalculatorConfigError

    if shutil.which("pw.x") is None:
        with pytest.raises(CalculatorConfigError, match="not on PATH"):
            make_calculator("espresso", ESPRESSO)
        return
    with pytest.raises(CalculatorConfigError, match="Si.nope.UPF.*not found"):
        make_calculator("espresso", {**ESPRESSO, "pseudopotentials": {"Si": "Si.nope.UPF"}})
    with pytest.raises(CalculatorConfigError, match="not on PATH"):
        make_calculator("espresso", {**ESPRESSO, "command": "pw-nowhere.x"})


def test_cp2k_shell_stays_alive_and_forces_are_gradients():
    import shutil

    if shutil.which("cp2k_shell") is None:
        pytest.skip("cp2k not installed (run_scripts/install_dft_codes.sh)")
    options = {"basis_set": "SZV-MOLOPT-SR-GTH", "pseudo_potential": "GTH-PBE", "xc": "PBE", "cutoff": 2700.0}
    calc = make_calculator("cp2k", options)
    atoms = water()
    atoms.center(vacuum=3.0)
    atoms.pbc = True
    atoms.calc = calc
    f = atoms.get_forces()
    # the same cp2k_shell serves every displaced structure
    assert f[1, 1] == pytest.approx(fd_force(atoms, calc, 1, 1, 2e-3), abs=0.02)


def test_vasp_input_writing(tmp_path):
    """No VASP (nor its POTCARs) here: check that the options reach VASP's INCAR and KPOINTS."""
    calc = make_calculator("vasp", {"xc": "PBE", "encut": 400, "ismear": 0, "sigma": 0.05, "kpts": [2, 2, 2],
                                    "directory": str(tmp_path)})
    assert calc.float_params["encut"] == 400 and calc.int_params["ismear"] == 0
    calc.write_kpoints(si2(), directory=str(tmp_path))
    assert (tmp_path / "KPOINTS").read_text().split("\n")[3].split() == ["2", "2", "2"]


def test_pyscf_periodic_forces_are_gradients():
    """pyscf.pbc through the same calculator: H2 in a 4-Å periodic box, LDA/GTH, Γ point."""
    from ase import Atoms

    calc = make_calculator("pyscf", {"basis": "gth-szv", "xc": "LDA", "pseudo": "gth-pade"})
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.74, 0.05, 0]], cell=[4, 4, 4], pbc=True)
    atoms.calc = calc
    f = atoms.get_forces()
    assert abs(f[1, 0]) > 1.0
    assert f[1, 0] == pytest.approx(fd_force(atoms, calc, 1, 0, 1e-3), abs=1e-3)
