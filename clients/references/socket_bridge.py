"""The ``socket`` reference: an i-PI socket server that any i-PI client serves, kept alive.

The DFT worker opens an i-PI server socket, starts the client command once, and sends it every
structure afterwards: the client keeps its wavefunctions (or its whole state) from call to call.
Any i-PI client works — ``pw.x --ipi``, CP2K's driver mode (the ``cp2k`` binary with
``RUN_TYPE DRIVER``, not ``cp2k_shell``), LAMMPS ``fix ipi``, i-PI's own ``i-pi-py_driver``. The
wire protocol is ASE's ``IPIProtocol``; the listening socket, the wait for the client and the
client's life are ours, so that each can fail with a message that says what happened.

Options (``[reference.options]``):

- ``client``: the client's command line. ``{unixsocket}``, ``{host}``, ``{port}`` and
  ``{input}`` (the input file written for ``code``) are filled in. E.g.
  ``"pw.x -in {input} --ipi {unixsocket}:UNIX"`` or
  ``"i-pi-py_driver -u -a {unixsocket} -m harmonic -o 0.5"``.
- ``code``: ``"espresso"`` writes a pw.x input from ``espresso`` options (the same keywords as
  the ``espresso`` reference) before starting the client; ``nosym`` is forced on, because pw.x
  in socket mode keeps the symmetry of the first geometry and gives wrong energies and forces
  for displaced structures otherwise. Empty: the client needs no input file.
- ``unixsocket``: the socket. A plain NAME is ``/tmp/ipi_NAME`` (what pw.x, CP2K and
  ``i-pi-py_driver -u -a NAME`` connect to); a full path (``/scratch/me/dft.sock``) is used as it
  is and ``{unixsocket}`` is that path (``i-pi-py_driver -u -S '' -a {unixsocket}``; pw.x and CP2K
  always prepend ``/tmp/ipi_`` and need a plain name). Default: ``slhmc-HOST-PID-RANDOM``, unique
  across processes, PID namespaces sharing one /tmp and PID reuse. The file is made mode 0600 and
  a unix peer of another user is refused. A leftover ``/tmp/ipi_slhmc-*`` file whose listener is
  gone (a SIGKILLed worker) is removed when the next bridge starts on that machine.
- ``port``: TCP on this port instead (TCP_NODELAY set: without it a round trip costs 40–90 ms
  instead of <1 ms). ``bind`` (default ``127.0.0.1``): the address to listen on. Loopback unless
  ``bind`` names another address *and* ``bind_reason`` says why (a client on another machine):
  the i-PI protocol has no authentication, and whoever connects first would label the chain. On
  loopback a peer owned by another user is refused (Linux). A fixed port serves one DFT worker
  per machine: ``workers.dft > 1`` with a fixed port is refused by the config check.
- ``timeout``: seconds to wait for the client — for its connection and for each answer; the DFT
  worker fills in ``reference.timeout`` when this is not given (default: none).
- ``directory``: the client's folder (its ``client.log``, the input written for ``code``). Default: a
  scratch directory of its own (``slhmc-ipi-*`` in the temporary folder), made at the client's first
  start and removed, after the client is stopped, when the bridge is closed or the interpreter exits;
  kept (and said so) if a call failed, since the error points at its ``client.log``. A directory
  given here is never removed.
- ``restart_on_cell_change``: start a fresh client when the cell changes. i-PI sends the cell with
  every step, and ``i-pi-py_driver``, CP2K and LAMMPS take it; pw.x 6.7 keeps the first cell's
  grids and k-point set and dies on a changed cell, so the default is on for pw.x only.

Units: i-PI speaks Hartree and Bohr; energies are converted with ASE's constant
(:data:`HARTREE_EV`, CODATA 2014: 27.211386024367243 eV), which differs from CP2K's own (used by
``cp2k_shell``, i.e. the ``cp2k`` reference) by 7.9e-8 relative. Each code's record in the registry
states its constant, and the DFT worker refuses to serve a chain whose other reference path converts
with a different one.

The client runs in its own process group with a parent-death signal (Linux): a SIGKILLed DFT
worker takes its client with it instead of leaving it spinning under PID 1.
"""

from __future__ import annotations

import copy
import ctypes
import ipaddress
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.socketio import IPIProtocol

from . import scratch
from .errors import ClientError, OptionError

log = logging.getLogger(__name__)

HARTREE_EV = units.Ha  # what ASE's IPIProtocol multiplies by: CODATA 2014
IPI_PREFIX = "/tmp/ipi_"
OUR_PREFIX = "slhmc-"
CLIENT_EXIT_S = 5.0  # after EXIT, how long the client may take before it is killed
_PR_SET_PDEATHSIG = 1

try:  # loaded here, never in the forked child (dlopen after fork can deadlock)
    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover - no libc to load
    _LIBC = None


def _child_setup(parent_pid: int) -> None:
    """In the client, before exec: die with the DFT worker (SIGTERM lets mpirun stop its ranks)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:  # the worker died before prctl took effect
            os._exit(1)


def socket_path(unixsocket: str) -> str:
    """``/tmp/ipi_NAME`` for a plain name; a full path as it is."""
    return unixsocket if "/" in unixsocket else IPI_PREFIX + unixsocket


def bound_unix_paths() -> set[str] | None:
    """Paths of unix sockets bound in this network namespace (Linux /proc/net/unix), None elsewhere."""
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return None
    return {fields[7] for fields in (line.split(None, 7) for line in lines) if len(fields) == 8}


def remove_stale_sockets(directory: str = "/tmp", prefix: str = "ipi_" + OUR_PREFIX) -> list[str]:
    """Remove our socket files that no process listens on any more (left by a SIGKILLed worker)."""
    bound = bound_unix_paths()
    if bound is None:
        return []
    removed = []
    for path in Path(directory).glob(prefix + "*"):
        if str(path) not in bound and path.is_socket() and path.owner() == _user():
            try:
                path.unlink()
                removed.append(str(path))
            except OSError:
                pass
    if removed:
        log.info("socket: removed %d stale socket file(s) of gone workers: %s", len(removed), ", ".join(removed))
    return removed


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _tcp_peer_uid(peer: tuple) -> int | None:
    """The uid owning the local TCP socket at ``peer`` (a loopback client), from /proc/net/tcp."""
    host, port = peer[0], peer[1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    table = "/proc/net/tcp6" if ip.version == 6 else "/proc/net/tcp"
    if ip.version == 4:
        want = f"{struct.unpack('<I', ip.packed)[0]:08X}:{port:04X}"
    else:
        want = "".join(f"{w:08X}" for w in struct.unpack("<4I", ip.packed)) + f":{port:04X}"
    try:
        lines = Path(table).read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 7 and fields[1] == want:
            return int(fields[7])
    return None


def needs_restart_on_cell_change(client: str, code: str) -> bool:
    """pw.x (6.7) keeps its first cell's grids and dies on a new one; other i-PI clients take the cell."""
    words = shlex.split(client)
    return code == "espresso" or any(Path(w).name.startswith("pw.x") for w in words)


class SocketBridge(Calculator):
    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        client: str,
        code: str = "",
        espresso: dict | None = None,
        unixsocket: str | None = None,
        port: int | None = None,
        timeout: float | None = None,
        directory: str | None = None,
        bind: str = "127.0.0.1",
        bind_reason: str = "",
        restart_on_cell_change: bool | None = None,
    ) -> None:
        super().__init__()
        if code not in ("", "espresso"):
            raise OptionError(f"socket: code must be 'espresso' or empty, got {code!r}")
        if unixsocket and port:
            raise OptionError("socket: give unixsocket or port, not both")
        try:
            loopback = ipaddress.ip_address(bind).is_loopback
        except ValueError:
            raise OptionError(f"socket: bind must be an IP address, got {bind!r}") from None
        if not loopback and not bind_reason.strip():
            raise OptionError(
                f"socket: bind = {bind!r} listens beyond this machine, and the i-PI protocol has no "
                "authentication (whoever connects first labels the chain); keep the default 127.0.0.1, or "
                "give reference.options.bind_reason saying why a remote client is needed")
        if not loopback and port:
            log.warning("socket: listening on %s:%s without authentication (%s)", bind, port, bind_reason)
        self.client = client
        self.code = code
        self.espresso_options = espresso or {}
        self.port = port
        self.bind = bind
        self.loopback = loopback
        name = unixsocket or f"{OUR_PREFIX}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.unixsocket = None if port else name
        self.path = None if port else socket_path(name)
        self.timeout = timeout
        self.restart_on_cell_change = (needs_restart_on_cell_change(client, code) if restart_on_cell_change is None
                                       else restart_on_cell_change)
        self._client_dir = directory
        self._workdir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.starts = 0  # clients started (cell changes for pw.x, failures): for logs and tests
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._protocol: IPIProtocol | None = None
        self._cell: np.ndarray | None = None
        if code == "espresso":
            from .espresso import DEBIAN_PSEUDO_DIR, check_espresso_inputs

            opts = self.espresso_options
            check_espresso_inputs(shlex.split(client)[0], opts.get("pseudo_dir", DEBIAN_PSEUDO_DIR),
                                  opts.get("pseudopotentials"))

    @property
    def where(self) -> str:
        return self.path if self.path else f"{self.bind}:{self.port}"

    @property
    def workdir(self) -> Path:
        """The client's folder, made at its first start (a config check that builds and closes a
        bridge leaves nothing behind): ``directory``, else a scratch directory of this bridge's."""
        if self._workdir is None:
            self._workdir = Path(self._client_dir or scratch.scratch_directory("slhmc-ipi-", owner=self))
        return self._workdir

    @property
    def client_log(self) -> Path:
        return self.workdir / "client.log"

    # -- the listening socket ---------------------------------------------------------------------
    def _listen(self) -> socket.socket:
        if self.path is not None:
            remove_stale_sockets()
            if os.path.lexists(self.path):
                bound = bound_unix_paths()
                if bound is not None and self.path not in bound:
                    log.info("socket: removing the stale socket file %s (no process listens on it)", self.path)
                    os.unlink(self.path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(self.path)
                os.chmod(self.path, 0o600)
            except OSError as err:
                sock.close()
                raise ClientError(
                    f"socket: cannot listen on the unix socket {self.path}: {err.strerror or err}"
                    + ("; another worker or run uses this name: leave reference.options.unixsocket unset for a "
                       "unique one" if err.errno == 98 else "")) from None
        else:
            sock = socket.socket(socket.AF_INET6 if ":" in self.bind else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.bind, self.port))
            except OSError as err:
                sock.close()
                raise ClientError(
                    f"socket: cannot listen on port {self.port} ({self.bind}): {err.strerror or err}"
                    + ("; another DFT worker or run on this machine uses port "
                       f"{self.port}: give each its own port, or leave reference.options.port unset (a unix "
                       "socket unique per worker)" if err.errno == 98 else "")) from None
        sock.listen(1)
        log.info("socket: listening on %s", self.where)
        return sock

    def _peer_allowed(self, conn: socket.socket, peer: object) -> bool:
        if self.path is not None:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _ = struct.unpack("3i", creds)
            if uid != os.getuid():
                log.warning("socket: refused a connection on %s from pid %d of uid %d (not ours)", self.path, pid, uid)
                return False
            return True
        if not self.loopback:
            log.info("socket: client connected from %s", peer)
            return True
        uid = _tcp_peer_uid(peer)  # type: ignore[arg-type]
        if uid is not None and uid != os.getuid():
            log.warning("socket: refused a connection on %s from %s of uid %d (not ours)", self.where, peer, uid)
            return False
        return True

    # -- the client ---------------------------------------------------------------------------------
    def _launch(self, atoms) -> subprocess.Popen:
        input_file = ""
        if self.code == "espresso":
            from .espresso import espresso_calculator

            opts = copy.deepcopy(self.espresso_options)
            data = opts.setdefault("input_data", {})
            data.setdefault("system", {})["nosym"] = True
            calc = espresso_calculator(directory=str(self.workdir), **opts)
            calc.write_inputfiles(atoms, ["energy", "forces"])
            input_file = "espresso.pwi"
        host = self.bind if self.loopback else socket.gethostname()
        command = self.client.format(unixsocket=self.unixsocket or "", host=host, port=self.port or "",
                                     input=input_file)
        log.info("socket: starting i-PI client: %s (in %s)", command, self.workdir)
        argv = shlex.split(command)
        if argv and shutil.which(argv[0]) is None:
            # i-pi-py_driver of a venv that is not on PATH: `slhmc codes` reports it usable from there
            beside = shutil.which(argv[0], path=str(Path(sys.executable).parent))
            if beside:
                argv[0] = beside
        self.workdir.mkdir(parents=True, exist_ok=True)
        out = open(self.client_log, "ab")
        parent = os.getpid()
        try:
            self.proc = subprocess.Popen(argv, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=lambda: _child_setup(parent))
        except (FileNotFoundError, PermissionError) as err:
            raise ClientError(f"socket: cannot start the client {command!r}: {err.strerror or err}") from None
        finally:
            out.close()
        return self.proc

    def _accept(self) -> None:
        """Wait for the client's connection: until it exits, or ``timeout`` s."""
        assert self._listener is not None and self.proc is not None
        deadline = None if not self.timeout else time.monotonic() + self.timeout
        self._listener.settimeout(0.2)
        while True:
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                status = self.proc.poll()
                if status is not None:
                    raise ClientError(f"socket: the i-PI client exited with status {status} before connecting "
                                          f"to {self.where}; see {self.client_log}") from None
                if deadline is not None and time.monotonic() > deadline:
                    raise ClientError(f"socket: the i-PI client did not connect to {self.where} within "
                                          f"{self.timeout:g} s (reference.timeout); see {self.client_log}") from None
                continue
            if self._peer_allowed(conn, peer):
                break
            conn.close()
        if self.port:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(self.timeout or None)
        self._conn = conn
        self._protocol = IPIProtocol(conn)

    def _start(self, atoms) -> None:
        self.starts += 1
        self._listener = self._listen()
        try:
            self._launch(atoms)
            self._accept()
        except BaseException:
            self._shutdown()
            raise
        self._cell = np.array(atoms.cell.array)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        try:
            self._calculate(atoms, properties, system_changes)
        except Exception:
            scratch.mark_failed(self._workdir)  # its client.log, which the error names, is kept
            raise

    def _calculate(self, atoms, properties, system_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if (self._protocol is not None and self.restart_on_cell_change
                and not np.allclose(self._cell, self.atoms.cell.array)):
            # pw.x 6.7 keeps the first cell's grids and k-point set and dies on a changed cell
            log.info("socket: the cell changed; restarting the i-PI client (pw.x)")
            self._shutdown()
        if self._protocol is None:
            self._start(self.atoms)
        try:
            r = self._protocol.calculate(self.atoms.positions, self.atoms.cell.array)
        except TimeoutError:
            self._shutdown()
            raise ClientError(f"socket: the i-PI client on {self.where} gave no answer within {self.timeout:g} s "
                                  f"(reference.timeout); see {self.client_log}") from None
        except (OSError, EOFError, AssertionError) as err:
            status = self.proc.poll() if self.proc is not None else None
            self._shutdown()
            exited = f", exit status {status}" if status is not None else ""
            raise ClientError(f"socket: the i-PI client on {self.where} failed ({err or type(err).__name__}"
                                  f"{exited}); see {self.client_log}") from None
        self._cell = np.array(self.atoms.cell.array)
        self.results = {"energy": r["energy"], "free_energy": r["energy"], "forces": r["forces"].copy()}

    def _shutdown(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            try:  # without EXIT a connected client may spin forever
                protocol.end()
            except OSError:
                pass
        for sock_attr in ("_conn", "_listener"):
            sock = getattr(self, sock_attr)
            setattr(self, sock_attr, None)
            if sock is not None:
                sock.close()
        if self.path is not None and os.path.lexists(self.path):
            try:
                os.unlink(self.path)
            except OSError:
                pass
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.wait(timeout=CLIENT_EXIT_S if protocol is not None else 0.5)
            except subprocess.TimeoutExpired:
                self._kill_group(proc)

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=3)
                return
            except subprocess.TimeoutExpired:
                continue

    def close(self) -> None:
        """Stop the client, then remove its scratch directory (unless a call failed there); used
        again, the bridge starts a new client in a new one."""
        try:
            self._shutdown()
        finally:
            self._release_workdir()

    def _release_workdir(self) -> None:
        workdir = self._workdir
        if workdir is not None and scratch.is_scratch(workdir):
            self._workdir = None
            scratch.release(workdir)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
