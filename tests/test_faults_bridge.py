"""Faults of the i-PI socket bridge, injected for real: real i-PI clients (i-PI's own
``i-pi-py_driver``), real sockets, real SIGKILLs. Traffic goes to loopback only."""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.calculators.calculator import CalculatorError

from slhmc.clients.dft import DFTHandler, check_same_units
from slhmc.clients.references import ReferenceCalculationError, code_status, make_calculator
from slhmc.clients.references.socket_bridge import (
    HARTREE_EV,
    SocketBridge,
    bound_unix_paths,
    needs_restart_on_cell_change,
    remove_stale_sockets,
)

from .runs import alive, free_port

BIN = Path(sys.executable).parent
DRIVER = shutil.which("i-pi-py_driver", path=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
pytestmark = pytest.mark.skipif(DRIVER is None, reason="i-pi-py_driver not installed (pip ipi)")
K = 0.05  # Hartree/Bohr², i-pi-py_driver's harmonic mode: E = k/2 Σ x², F = -k x


def water(shift: float = 0.0, box: float = 10.0) -> Atoms:
    a = Atoms("H2O", positions=[[0.1, 0.0, 0.2], [0.9, 0.3, -0.1], [-0.4, 0.7, 0.0]], cell=[box] * 3, pbc=True)
    a.positions += shift
    return a


def harmonic_energy(a: Atoms) -> float:
    return 0.5 * K * float(np.sum((a.positions / units.Bohr) ** 2)) * HARTREE_EV


def wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_tcp_mode_listens_on_loopback_only_and_a_public_bind_needs_a_reason():
    port = free_port()
    calc = make_calculator("socket", {"client": f"{DRIVER} -a {{host}} -p {{port}} -m harmonic -o {K}",
                                      "port": port, "timeout": 20})
    try:
        a = water()
        a.calc = calc
        assert a.get_potential_energy() == pytest.approx(harmonic_energy(a), rel=1e-12)
        host, bound_port = calc._listener.getsockname()[:2]  # the listening socket's own bound address
        assert bound_port == port and ipaddress.ip_address(host).is_loopback
        # and as the kernel lists it: no wildcard listener on this port
        listeners = [ln.split()[1] for ln in Path("/proc/net/tcp").read_text().splitlines()[1:]
                     if ln.split()[3] == "0A" and ln.split()[1].endswith(f":{port:04X}")]
        assert listeners == [f"0100007F:{port:04X}"]
        assert calc._conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        calc.close()
    with pytest.raises(CalculatorError, match="bind_reason"):
        make_calculator("socket", {"client": "x", "port": port, "bind": "0.0.0.0"})
    SocketBridge("x", port=port, bind="0.0.0.0", bind_reason="pw.x runs on the compute node")  # allowed, not started


def test_a_client_that_never_connects_fails_at_reference_timeout_and_is_stopped():
    # reference.timeout from the server's config reaches the bridge through the DFT worker's handler
    handler = DFTHandler()
    handler.configure({"reference": {"calculator": "socket", "timeout": 2.0,
                                     "options": {"client": "sleep 120"}}})
    msg = {"type": "label_task", "task_id": 1, "numbers": np.array([1, 1, 8]), "positions": water().positions,
           "cell": np.eye(3) * 10, "pbc": np.array([True] * 3)}
    t0 = time.monotonic()
    try:
        with pytest.raises(CalculatorError, match="did not connect") as err:
            handler.handle(msg)
        assert time.monotonic() - t0 < 6
        assert "2 s" in str(err.value)
        assert handler.calc.proc is None  # the client was stopped, not left behind
        workdir = handler.calc.workdir
        assert str(workdir / "client.log") in str(err.value)
    finally:
        handler.close()
    assert (workdir / "client.log").is_file()  # kept: the error sends the user there
    shutil.rmtree(workdir)


def test_sigkilled_dft_worker_takes_its_client_along_and_its_socket_file_is_cleaned_up(tmp_path):
    # the bridge runs in a worker thread, as in `slhmc worker dft` (the parent-death signal is per thread)
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from concurrent.futures import ThreadPoolExecutor
        from ase import Atoms
        from slhmc.clients.references import make_calculator
        calc = make_calculator("socket", {{"client": "{DRIVER} -u -a {{unixsocket}} -m harmonic -o {K}",
                                           "timeout": 20}})
        def label():
            a = Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], cell=[8] * 3, pbc=True)
            a.calc = calc
            return a.get_potential_energy()
        pool = ThreadPoolExecutor(1)  # kept: a collected pool ends its thread, and the client with it
        pool.submit(label).result()
        print(calc.proc.pid, calc.path, calc.workdir, flush=True)
        time.sleep(600)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    workdir = None
    try:
        client_pid, path, workdir = proc.stdout.readline().split()
        client_pid = int(client_pid)
        assert alive(client_pid) and Path(path).is_socket()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert wait_until(lambda: not alive(client_pid), 10), "the i-PI client outlived its DFT worker"
        assert Path(path).exists() and path not in bound_unix_paths()  # left behind, and nobody listens
        assert path in remove_stale_sockets()  # what every new bridge does before it listens
        assert not Path(path).exists()
    finally:
        proc.kill()
        proc.wait()
        if workdir is not None:  # a SIGKILLed worker removes nothing itself
            shutil.rmtree(workdir, ignore_errors=True)


def test_socket_names_are_unique_and_stale_or_live_collisions_are_handled(tmp_path):
    a, b = SocketBridge("x"), SocketBridge("x")
    assert a.path != b.path  # same host, same PID: still distinct (a random part, not only host+PID)
    # PID reuse after a crash, or another PID namespace that left this very name: a stale file
    name = f"slhmc-test-stale-{os.getpid()}"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(f"/tmp/ipi_{name}")
    stale.close()  # the file stays, no one listens
    calc = make_calculator("socket", {"client": f"{DRIVER} -u -a {{unixsocket}} -m harmonic -o {K}",
                                      "unixsocket": name, "timeout": 20})
    try:
        atoms = water()
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(harmonic_energy(atoms), rel=1e-12)
        # a live listener on that name (another worker's): refused, saying so, and no client started
        other = SocketBridge("sleep 60", unixsocket=name, timeout=5)
        with pytest.raises(CalculatorError, match="uses this name") as err:
            other.calculate(water())
        assert "client.log" not in str(err.value) and other.proc is None
    finally:
        calc.close()
    assert not Path(f"/tmp/ipi_{name}").exists()


def test_a_port_in_use_is_a_bind_error_naming_the_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        calc = SocketBridge("sleep 60", port=port, timeout=5)
        with pytest.raises(CalculatorError) as err:
            calc.calculate(water())
    text = str(err.value)
    assert f"port {port}" in text and "cannot listen" in text and "client.log" not in text
    assert calc.proc is None  # no client was started for a socket that does not exist


def test_full_path_unixsocket(tmp_path):
    folder = tempfile_dir()
    path = Path(folder) / "dft.sock"
    calc = make_calculator("socket", {"client": f"{DRIVER} -u -S '' -a {{unixsocket}} -m harmonic -o {K}",
                                      "unixsocket": str(path), "timeout": 20})
    try:
        a = water()
        a.calc = calc
        assert a.get_potential_energy() == pytest.approx(harmonic_energy(a), rel=1e-12)
        assert calc.path == str(path) and path.is_socket() and (path.stat().st_mode & 0o777) == 0o600
    finally:
        calc.close()
    assert not path.exists()
    os.rmdir(folder)


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="slhmc-t-")  # short: unix socket paths are limited to 107 bytes


def test_a_cell_change_keeps_the_client_except_for_pw_x():
    calc = make_calculator("socket", {"client": f"{DRIVER} -u -a {{unixsocket}} -m harmonic -o {K}", "timeout": 20})
    try:
        pids = []
        for box in (10.0, 10.3, 9.8):  # strained bootstrap copies
            a = water(0.02, box)
            a.calc = calc
            assert a.get_potential_energy() == pytest.approx(harmonic_energy(a), rel=1e-12)
            pids.append(calc.proc.pid)
        assert len(set(pids)) == 1 and calc.starts == 1
    finally:
        calc.close()
    assert needs_restart_on_cell_change("mpirun -np 2 pw.x -in {input} --ipi {unixsocket}:UNIX", "")
    assert not needs_restart_on_cell_change("cp2k -i driver.inp", "")


def test_the_bridge_uses_ases_codata_2014_hartree_and_a_cp2k_shell_peer_is_refused():
    calc = make_calculator("socket", {"client": f"{DRIVER} -u -a {{unixsocket}} -m harmonic -o {K}", "timeout": 20})
    try:
        a = water(0.1)
        a.calc = calc
        e_hartree = 0.5 * K * float(np.sum((a.positions / units.Bohr) ** 2))
        assert a.get_potential_energy() == pytest.approx(e_hartree * 27.211386024367243, rel=1e-14)
        assert a.get_potential_energy() != pytest.approx(e_hartree * 27.21138386, rel=1e-9)  # not CODATA 2006
    finally:
        calc.close()
    server_ref = {"calculator": "cp2k", "options": {}}
    local_ref = {"calculator": "socket", "options": {"client": "cp2k -i driver.inp"}}
    assert "Hartree" in check_same_units(local_ref, server_ref)
    handler = DFTHandler(local_ref)
    handler.configure({"reference": server_ref})
    with pytest.raises(ReferenceCalculationError, match="Hartree"):
        handler.handle({"type": "label_task"})
    assert check_same_units({"calculator": "socket"}, {"calculator": "pyscf"}) is None


@pytest.mark.skipif(shutil.which("cp2k") is None, reason="CP2K not installed here")
def test_cp2k_driver_mode_through_the_bridge(tmp_path):  # pragma: no cover - CP2K only where installed
    inp = tmp_path / "driver.inp"
    inp.write_text(textwrap.dedent("""
        &GLOBAL
          PROJECT h2o
          RUN_TYPE DRIVER
        &END GLOBAL
        &MOTION
          &DRIVER
            HOST {unixsocket}
            UNIX
          &END DRIVER
        &END MOTION
        &FORCE_EVAL
          &DFT
            BASIS_SET_FILE_NAME BASIS_MOLOPT
            POTENTIAL_FILE_NAME GTH_POTENTIALS
            &MGRID
              CUTOFF 200
            &END MGRID
            &XC
              &XC_FUNCTIONAL PBE
              &END XC_FUNCTIONAL
            &END XC
          &END DFT
          &SUBSYS
            &CELL
              ABC 8 8 8
            &END CELL
            &KIND H
              BASIS_SET SZV-MOLOPT-SR-GTH
              POTENTIAL GTH-PBE
            &END KIND
            &KIND O
              BASIS_SET SZV-MOLOPT-SR-GTH
              POTENTIAL GTH-PBE
            &END KIND
            &COORD
              O 0 0 0
              H 0.76 0.59 0
              H -0.76 0.59 0
            &END COORD
          &END SUBSYS
        &END FORCE_EVAL
    """))
    calc = SocketBridge("sh -c \"sed 's#{{unixsocket}}#{unixsocket}#' " + str(inp) + " > d.inp && cp2k -i d.inp\"",
                        timeout=120)
    try:
        a = Atoms("OH2", positions=[[0, 0, 0], [0.76, 0.59, 0], [-0.76, 0.59, 0]], cell=[8] * 3, pbc=True)
        a.calc = calc
        assert np.isfinite(a.get_potential_energy())
    finally:
        calc.close()


def test_slhmc_codes_tells_path_from_next_to_the_interpreter(tmp_path):
    path = os.environ.get("PATH", "")
    bare = os.pathsep.join(p for p in path.split(os.pathsep) if p and Path(p).resolve() != BIN.resolve())
    os.environ["PATH"] = bare
    try:
        ok, detail = code_status("socket")
        if shutil.which("i-pi-py_driver") is None:
            assert "not on PATH" in detail and str(BIN) in detail
    finally:
        os.environ["PATH"] = path
    ok, detail = code_status("socket")
    assert "cp2k_shell" not in detail
