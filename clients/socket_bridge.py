"""The ``socket`` reference: an i-PI socket server that any i-PI client serves, kept alive.

The DFT worker opens an i-PI server socket (ASE's ``SocketIOCalculator``), starts the client
command once, and sends it every structure afterwards: the client keeps its wavefunctions (or
its whole state) from call to call. Any i-PI client works — ``pw.x --ipi``, CP2K's i-PI client,
LAMMPS ``fix ipi``, i-PI's own ``i-pi-py_driver``.

Options (``[reference.options]``):

- ``client``: the client's command line. ``{unixsocket}``, ``{host}``, ``{port}`` and
  ``{input}`` (the input file written for ``code``) are filled in. E.g.
  ``"pw.x -in {input} --ipi {unixsocket}:UNIX"`` or
  ``"i-pi-py_driver -u -a {unixsocket} -m harmonic -o 0.5"``.
- ``code``: ``"espresso"`` writes a pw.x input from ``espresso`` options (the same keywords as
  the ``espresso`` reference) before starting the client; ``nosym`` is forced on, because pw.x
  in socket mode keeps the symmetry of the first geometry and gives wrong energies and forces
  for displaced structures otherwise (FIELD-NOTES). Empty: the client needs no input file.
- ``unixsocket``: the socket name (``/tmp/ipi_NAME``); default unique per host and process, so
  workers on one node never collide. ``port``: use TCP on this port instead (TCP_NODELAY set on
  the server side: without it a round trip costs 40–90 ms instead of <1 ms).
- ``timeout``: seconds to wait for the client per call (default: none).
"""

from __future__ import annotations

import copy
import logging
import os
import shlex
import socket
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, CalculatorError, all_changes
from ase.calculators.socketio import SocketIOCalculator

log = logging.getLogger(__name__)


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
    ) -> None:
        super().__init__()
        if code not in ("", "espresso"):
            raise CalculatorError(f"socket: code must be 'espresso' or empty, got {code!r}")
        if unixsocket and port:
            raise CalculatorError("socket: give unixsocket or port, not both")
        self.client = client
        self.code = code
        self.espresso_options = espresso or {}
        self.port = port
        self.unixsocket = None if port else (unixsocket or f"slhmc-{socket.gethostname()}-{os.getpid()}")
        self.timeout = timeout
        self.workdir = Path(directory or tempfile.mkdtemp(prefix="slhmc-ipi-"))
        self.proc: subprocess.Popen | None = None
        self._io: SocketIOCalculator | None = None
        if code == "espresso":
            from .espresso import DEBIAN_PSEUDO_DIR, check_espresso_inputs

            opts = self.espresso_options
            check_espresso_inputs(shlex.split(client)[0], opts.get("pseudo_dir", DEBIAN_PSEUDO_DIR),
                                  opts.get("pseudopotentials"))

    def _launch(self, atoms, properties=None, port=None, unixsocket=None) -> subprocess.Popen:
        input_file = ""
        if self.code == "espresso":
            from .espresso import espresso_calculator

            opts = copy.deepcopy(self.espresso_options)
            data = opts.setdefault("input_data", {})
            data.setdefault("system", {})["nosym"] = True
            calc = espresso_calculator(directory=str(self.workdir), **opts)
            calc.write_inputfiles(atoms, ["energy", "forces"])
            input_file = "espresso.pwi"
        command = self.client.format(unixsocket=unixsocket or "", host="localhost", port=port or "",
                                     input=input_file)
        log.info("socket: starting i-PI client: %s (in %s)", command, self.workdir)
        out = open(self.workdir / "client.log", "ab")
        try:
            self.proc = subprocess.Popen(shlex.split(command), cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT)
        except FileNotFoundError as err:
            raise CalculatorError(f"socket: cannot start the client {command!r}: {err}") from None
        finally:
            out.close()
        return self.proc

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if self._io is not None and not np.allclose(self._io.atoms.cell.array, self.atoms.cell.array):
            # a new cell (a strained bootstrap copy): codes in driver mode keep the first cell's
            # grids and k-point set, and pw.x 6.7 dies on a changed cell: start a fresh client
            log.info("socket: the cell changed; restarting the i-PI client")
            self._shutdown()
        if self._io is None:
            self._io = SocketIOCalculator(port=self.port, unixsocket=self.unixsocket, timeout=self.timeout,
                                          launch_client=self._launch)
        a = self.atoms.copy()
        try:
            self._io.calculate(a, ["energy", "forces"], all_changes if self._io.atoms is None else ["positions"])
        except (OSError, EOFError) as err:
            self._shutdown()
            log_file = self.workdir / "client.log"
            raise CalculatorError(f"socket: the i-PI client failed ({err}); see {log_file}") from None
        server = self._io.server
        if self.port and server is not None and server.clientsocket is not None:
            server.clientsocket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        r = self._io.results
        self.results = {"energy": r["energy"], "free_energy": r["energy"], "forces": r["forces"].copy()}

    def _shutdown(self) -> None:
        io, self._io = self._io, None
        if io is not None and io.server is not None:
            # ASE does not send EXIT on close; a client left without it may spin forever
            try:
                if io.server.protocol is not None:
                    io.server.protocol.end()
            except OSError:
                pass
            io.server.proc = None  # we wait for the client ourselves, with a time limit
            io.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self._shutdown()

    def __del__(self) -> None:
        try:
            self._shutdown()
        except Exception:
            pass
