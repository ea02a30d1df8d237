"""Scratch directories of the reference codes: removed at close and at interpreter exit, kept where a
reference call failed (the error points there), never removed when the user named the directory."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import CalculatorError

from slhmc.clients.references import make_calculator, scratch

from .runs import alive

BIN = Path(sys.executable).parent
DRIVER = shutil.which("i-pi-py_driver", path=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
needs_driver = pytest.mark.skipif(DRIVER is None, reason="i-pi-py_driver not installed (pip ipi)")
HARMONIC = f"{DRIVER} -u -a {{unixsocket}} -m harmonic -o 0.05"
KEPT = "kept the scratch directory"


def water(box: float = 8.0) -> Atoms:
    return Atoms("OH2", positions=[[0, 0, 0], [0.76, 0.59, 0], [-0.76, 0.59, 0]], cell=[box] * 3, pbc=True)


def kept_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if KEPT in r.getMessage()]


# -- the helper itself ------------------------------------------------------------------------------------
def test_release_removes_a_scratch_directory_and_keeps_a_failed_one_saying_so_once(caplog):
    caplog.set_level(logging.WARNING, logger=scratch.__name__)
    ok, bad = scratch.scratch_directory("slhmc-t-ok-"), scratch.scratch_directory("slhmc-t-bad-")
    try:
        for d in (ok, bad):
            (Path(d) / "out.txt").write_text("x")
            assert scratch.is_scratch(d)
        scratch.mark_failed(bad)
        scratch.release(ok)
        scratch.release(bad)
        scratch.release(bad)  # released already: nothing more to say
        assert not Path(ok).exists() and (Path(bad) / "out.txt").is_file()
        assert kept_lines(caplog) == [f"{KEPT} {bad} of a failed reference call"]
        assert not scratch.is_scratch(ok) and not scratch.is_scratch(bad)
    finally:
        shutil.rmtree(bad, ignore_errors=True)


def test_a_directory_not_made_here_is_never_touched(tmp_path):
    scratch.mark_failed(tmp_path)
    scratch.release(tmp_path)
    scratch.release(None)
    assert tmp_path.is_dir() and not scratch.is_scratch(tmp_path)


def test_at_exit_each_live_owner_is_closed_before_its_directory_goes(monkeypatch):
    monkeypatch.setattr(scratch, "_made", {})  # only this test's directories
    seen = []

    class Owner:
        def close(self):
            seen.append(Path(self.dir).is_dir())  # still there while its code is stopped
            scratch.release(self.dir)

    owner = Owner()
    owner.dir = scratch.scratch_directory("slhmc-t-owner-", owner=owner)
    orphan = scratch.scratch_directory("slhmc-t-orphan-", owner=Owner())  # its owner is gone already
    scratch.release_all()
    assert seen == [True] and not Path(owner.dir).exists() and not Path(orphan).exists()


# -- the socket bridge (i-pi-py_driver) ----------------------------------------------------------------
@needs_driver
def test_bridge_scratch_directory_is_removed_at_close_after_the_client_stopped():
    calc = make_calculator("socket", {"client": HARMONIC, "timeout": 20})
    a = water()
    a.calc = calc
    assert np.isfinite(a.get_potential_energy())
    workdir, pid = calc.workdir, calc.proc.pid
    assert (workdir / "client.log").is_file() and workdir.name.startswith("slhmc-ipi-")
    calc.close()
    assert not alive(pid) and not workdir.exists()
    # used again after close: a new client in a new scratch directory, removed in its turn
    a.positions[0, 0] += 0.1
    assert np.isfinite(a.get_potential_energy())
    again = calc.workdir
    assert again != workdir and again.is_dir()
    calc.close()
    assert not again.exists()


@needs_driver
def test_bridge_scratch_directory_of_a_failed_call_is_kept_with_its_client_log(caplog):
    caplog.set_level(logging.WARNING, logger=scratch.__name__)
    calc = make_calculator("socket", {"client": f"{DRIVER} -u -a {{unixsocket}} -m no-such-mode", "timeout": 20})
    a = water()
    a.calc = calc
    with pytest.raises(CalculatorError, match="client.log") as err:
        a.get_potential_energy()
    workdir = calc.workdir
    try:
        assert str(workdir / "client.log") in str(err.value)
        calc.close()
        calc.close()
        assert (workdir / "client.log").is_file()  # what the error message tells the user to read
        assert kept_lines(caplog) == [f"{KEPT} {workdir} of a failed reference call"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@needs_driver
def test_bridge_directory_given_by_the_user_is_kept(tmp_path):
    mine = tmp_path / "client"
    calc = make_calculator("socket", {"client": HARMONIC, "timeout": 20, "directory": str(mine)})
    a = water()
    a.calc = calc
    assert np.isfinite(a.get_potential_energy())
    calc.close()
    assert (mine / "client.log").is_file()


def _run_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent("""
        import logging
        from ase import Atoms
        from slhmc.clients.references import make_calculator
        logging.basicConfig(level=logging.WARNING)
        a = Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], cell=[8] * 3, pbc=True)
    """) + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


@needs_driver
def test_at_interpreter_exit_an_unclosed_bridge_stops_its_client_and_its_directory_goes(tmp_path):
    done = _run_script(tmp_path, f"""
        calc = make_calculator("socket", {{"client": "{HARMONIC}", "timeout": 20}})
        a.calc = calc
        a.get_potential_energy()
        print(calc.workdir, calc.proc.pid, flush=True)
        # exits without close(), the calculator still referenced
    """)
    assert done.returncode == 0, done.stderr
    workdir, pid = done.stdout.split()
    assert not Path(workdir).exists() and not alive(int(pid))
    assert KEPT not in done.stderr


@needs_driver
def test_at_interpreter_exit_a_failed_bridge_directory_is_kept_and_said_once(tmp_path):
    done = _run_script(tmp_path, f"""
        calc = make_calculator("socket", {{"client": "{DRIVER} -u -a {{unixsocket}} -m no-such-mode",
                                           "timeout": 20}})
        a.calc = calc
        try:
            a.get_potential_energy()
        except Exception as err:
            print(calc.workdir, flush=True)
    """)
    workdir = Path(done.stdout.strip())
    try:
        assert done.returncode == 0, done.stderr
        assert (workdir / "client.log").is_file()
        assert done.stderr.count(f"{KEPT} {workdir} of a failed reference call") == 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- the file-based adapters: Quantum ESPRESSO, CP2K -------------------------------------------------------
@pytest.fixture
def pseudo_dir(tmp_path):
    folder = tmp_path / "pseudo"
    folder.mkdir()
    (folder / "Si.UPF").write_text("not read: the command below never runs pw.x\n")
    return folder


def test_espresso_scratch_directory_is_removed_at_close_and_a_failed_run_keeps_its_output(pseudo_dir, caplog):
    caplog.set_level(logging.WARNING, logger=scratch.__name__)
    options = {"pseudopotentials": {"Si": "Si.UPF"}, "pseudo_dir": str(pseudo_dir)}
    unused = make_calculator("espresso", {**options, "command": "false"})
    directory = Path(unused.directory)
    assert directory.is_dir() and directory.name.startswith("slhmc-pw-")
    unused.close()
    assert not directory.exists()

    failing = make_calculator("espresso", {**options, "command": "false"})  # `false -in espresso.pwi` fails
    directory = Path(failing.directory)
    a = bulk("Si")
    a.calc = failing
    with pytest.raises(subprocess.CalledProcessError):
        a.get_potential_energy()
    try:
        failing.close()
        assert (directory / "espresso.pwi").is_file()
        assert kept_lines(caplog) == [f"{KEPT} {directory} of a failed reference call"]
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    mine = pseudo_dir.parent / "pw"
    given = make_calculator("espresso", {**options, "command": "false", "directory": str(mine)})
    a.calc = given
    with pytest.raises(subprocess.CalledProcessError):
        a.get_potential_energy()
    given.close()
    assert (mine / "espresso.pwi").is_file()


@pytest.mark.skipif(shutil.which("pw.x") is None or not Path("/usr/share/espresso/pseudo/Si.pz-vbc.UPF").is_file(),
                    reason="pw.x or its Si pseudopotential not installed (run_scripts/install_dft_codes.sh)")
def test_espresso_run_leaves_nothing_after_close():
    calc = make_calculator("espresso", {"pseudopotentials": {"Si": "Si.pz-vbc.UPF"}, "kpts": [1, 1, 1],
                                        "input_data": {"system": {"ecutwfc": 12.0}}})
    a = bulk("Si")
    a.calc = calc
    assert np.isfinite(a.get_potential_energy())
    directory = Path(calc.directory)
    assert (directory / "espresso.pwo").is_file()
    calc.close()
    assert not directory.exists()


CP2K = {"basis_set": "SZV-MOLOPT-SR-GTH", "pseudo_potential": "GTH-PBE", "xc": "PBE", "cutoff": 2700.0}
needs_cp2k = pytest.mark.skipif(shutil.which("cp2k_shell") is None,
                                reason="cp2k_shell not installed (run_scripts/install_dft_codes.sh)")


@needs_cp2k
def test_cp2k_scratch_directory_with_its_wavefunctions_is_removed_at_close():
    calc = make_calculator("cp2k", CP2K)
    a = water(6.0)
    a.calc = calc
    assert np.isfinite(a.get_potential_energy())
    directory = Path(calc.directory)
    pid = calc._shell._child.pid
    assert directory.name.startswith("slhmc-cp2k-") and (directory / "cp2k-RESTART.wfn").is_file()
    calc.close()
    assert not directory.exists() and not alive(pid)


@needs_cp2k
def test_cp2k_failed_call_keeps_its_output_and_a_user_directory_is_kept(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=scratch.__name__)
    calc = make_calculator("cp2k", {**CP2K, "basis_set": "NO-SUCH-BASIS"})
    a = water(6.0)
    a.calc = calc
    directory = Path(calc.directory)
    with pytest.raises((ValueError, AssertionError)):  # ASE's CP2K reads the dead shell's empty answer
        a.get_potential_energy()
    try:
        with pytest.warns(RuntimeWarning, match="not ready"):  # ASE's CP2K stops the dead shell
            calc.close()
        assert (directory / "cp2k.out").is_file()
        assert kept_lines(caplog) == [f"{KEPT} {directory} of a failed reference call"]
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    mine = tmp_path / "cp2k"
    calc = make_calculator("cp2k", {**CP2K, "directory": str(mine)})
    a.calc = calc
    assert np.isfinite(a.get_potential_energy())
    calc.close()
    assert (mine / "cp2k.out").is_file()
