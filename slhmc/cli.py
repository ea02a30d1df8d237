"""The ``slhmc`` command: run | server | worker | analyze."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from . import __version__

DEFAULT_BIND = "tcp://127.0.0.1:5555"
EXIT_EXTRAPOLATION_STOP = 3  # slhmc md --on-extrapolation stop ended at least one repeat early


def _logging(level: int, log_file: Path | None = None, console_level: int | None = None) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(console_level or level)
    console.setFormatter(fmt)
    root.addHandler(console)
    if log_file is not None:
        fh = logging.FileHandler(log_file)
        fh.setLevel(level)
        fh.setFormatter(fmt)
        root.addHandler(fh)


def _load(path: str, local_reference: bool = False):
    from .config import ConfigError, check_inputs, load_config

    try:
        cfg = load_config(path)
        check_inputs(cfg, local_reference)
    except ConfigError as err:
        print(f"slhmc: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return cfg


ZMQ_SCHEMES = ("tcp://", "ipc://", "inproc://")


def _address_error(flag: str, address: str) -> str | None:
    """One line saying what to write instead, for an address ZeroMQ cannot take; None if it can."""
    if address.startswith(ZMQ_SCHEMES):
        if address.startswith("tcp://") and not address[len("tcp://"):].rpartition(":")[2].isdigit() \
                and not address.endswith(":*"):
            return f"{flag} {address} has no port; write e.g. {address.rstrip(':')}:5555"
        return None
    suggestion = f"tcp://{address}" if ":" in address and "/" not in address else f"ipc://{address}"
    return f"{flag} {address} is not a ZeroMQ address; write {flag} {suggestion} (or ipc:///path/to/socket)"


def _sigterm_as_interrupt() -> None:
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cmd_run(args: argparse.Namespace) -> int:
    from .launcher import run_all

    if args.bind is not None and (problem := _address_error("--bind", args.bind)):
        print(f"slhmc: {problem}", file=sys.stderr)
        return 2
    cfg = _load(args.config, local_reference=True)
    _logging(logging.INFO)
    return run_all(cfg, args.config, args.out, args.resume, args.bind, not args.no_progress)


def cmd_server(args: argparse.Namespace) -> int:
    from slhmc.server.hmc import HMCServer, RunAborted
    from slhmc.server.outputs import RunDirectoryError

    if problem := _address_error("--bind", args.bind):
        print(f"slhmc: {problem}", file=sys.stderr)
        return 2
    cfg = _load(args.config)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress and sys.stderr.isatty()
    _logging(logging.INFO, Path(args.out) / "server.log", logging.WARNING if progress else logging.INFO)
    _sigterm_as_interrupt()
    from ase.io import read

    from .structure import structure_summary

    # formula and shortest distance per element pair: a wrongly built cell shows at a glance
    logging.getLogger("slhmc").info("start structure %s: %s", cfg.structure_path.name,
                                    structure_summary(read(cfg.structure_path)))
    import zmq

    from slhmc.security import SecurityError, server_setup

    try:
        setup = server_setup(args.keys, args.bind, zmq.Context.instance())
        server = HMCServer(cfg, args.out, bind=args.bind, resume=args.resume, progress=progress, socket_setup=setup)
    except (RunDirectoryError, SecurityError, RunAborted) as err:
        print(f"slhmc: {err}", file=sys.stderr)
        return 2
    except zmq.ZMQError as err:  # the bind: a port in use, an unknown interface
        hint = ("; another slhmc server (or another program) uses it: stop it, or choose another port with --bind"
                if err.errno == zmq.EADDRINUSE else "")
        logging.getLogger("slhmc").error("cannot bind %s: %s%s", args.bind, err.strerror, hint)
        print(f"slhmc: cannot bind {args.bind}: {err.strerror}{hint}", file=sys.stderr)
        return 2
    address = _write_address_file(args.address_file, server.broker.endpoint) if args.address_file else None
    try:
        return server.run()
    except KeyboardInterrupt:
        logging.getLogger("slhmc").warning("interrupted; the checkpoint holds the last finished trial")
        return 130
    finally:
        if address is not None:
            _remove_address_file(args.address_file, address)


def _write_address_file(path: str, endpoint: str) -> str:
    """``slhmc server --address-file``: written after the bind, atomically (a worker polling the file
    never reads half an address). Returns what was written."""
    import os

    from slhmc.server.broker import connect_address

    address = connect_address(endpoint)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # per process: two servers never share one
    tmp.write_text(address + "\n")
    os.replace(tmp, target)
    logging.getLogger("slhmc").info("workers connect to %s (written to %s)", address, target)
    return address


def _remove_address_file(path: str, address: str) -> None:
    """Remove the address file at exit, so that workers wait for the next server instead of calling a
    gone one; left alone if another server has written its own address there since."""
    target = Path(path)
    try:
        if target.read_text().strip() == address:
            target.unlink()
    except OSError:  # already gone
        pass


def cmd_worker(args: argparse.Namespace) -> int:
    if problem := _address_error("--connect", args.connect):
        print(f"slhmc: {problem}", file=sys.stderr)
        return 2
    import torch

    from slhmc.clients.worker import serve

    torch.set_num_threads(args.threads)
    _logging(logging.INFO)
    _sigterm_as_interrupt()
    local_reference, local_dir = None, None
    if args.config:  # only its [reference] is read: a file with that section alone will do
        from .config import ConfigError, load_local_reference

        try:
            local = load_local_reference(args.config)
        except ConfigError as err:
            print(f"slhmc: {err}", file=sys.stderr)
            return 2
        local_reference, local_dir = local.reference.model_dump(mode="json"), local.base_dir
    if args.role == "dft":
        from slhmc.clients.dft import DFTHandler

        handler = DFTHandler(local_reference, local_dir)
    elif args.role == "mlmd":
        from slhmc.clients.mlmd import MLMDHandler

        handler = MLMDHandler(args.device)
    else:
        from slhmc.clients.trainer import TrainerHandler

        handler = TrainerHandler(args.device)
    from slhmc.security import SecurityError, client_setup

    try:
        setup = client_setup(args.keys, args.key_name)
    except SecurityError as err:
        print(f"slhmc: {err}", file=sys.stderr)
        return 2
    import zmq

    try:
        return serve(handler, args.connect, name=args.name, timeout_s=args.timeout, max_idle_s=args.max_idle or None,
                     socket_setup=setup)
    except zmq.ZMQError as err:  # an address ZeroMQ refuses (an unknown host, a bad ipc path)
        print(f"slhmc: cannot connect to {args.connect}: {err.strerror}", file=sys.stderr)
        return 2


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze
    from .analysis.compare import CompareError, compare, load_source
    from .analysis.expansion import ExpansionError, expansion_points, thermal_expansion

    for name in args.dir:
        if not Path(name).is_dir():
            what = ("is not a directory (a trajectory file goes after --compare)" if Path(name).exists()
                    else "no such directory")
            print(f"slhmc: analyze {name}: {what}", file=sys.stderr)
            return 2
    if len(args.dir) > 1:  # NPT runs at several temperatures: each analysed, then the thermal expansion
        if args.compare:
            print("slhmc: --compare takes one DIR", file=sys.stderr)
            return 2
        try:  # runs that give no expansion are reported before the analyses run
            points = expansion_points(args.dir)
        except ExpansionError as err:
            print(f"slhmc: analyze: {err}", file=sys.stderr)
            return 2
        for name in args.dir:
            status = analyze(Path(name))
            if status:
                return status
            print()
        print("\n".join(thermal_expansion(args.dir, args.out, points=points)["report"]))
        return 0
    path = Path(args.dir[0])
    try:  # a missing or unreadable OTHER is reported before the analysis runs
        others = [load_source(other) for other in args.compare]
    except CompareError as err:
        print(f"slhmc: --compare: {err}", file=sys.stderr)
        return 2
    status = analyze(path)
    if status or not others:
        return status
    try:
        print("\n".join(compare(path, others)["report"]))
    except CompareError as err:
        print(f"slhmc: --compare: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_md(args: argparse.Namespace) -> int:
    import torch

    from .md import flagged_repeats, run_md, stopped_repeats

    torch.set_num_threads(args.threads)
    _logging(logging.INFO)
    try:
        out = run_md(args.model, args.structure, args.temperature, args.steps, args.timestep, args.out,
                     ensemble=args.ensemble, repeats=args.repeats, equilibrate=args.equilibrate, stride=args.stride,
                     seed=args.seed, progress=not args.no_progress, device=args.device,
                     on_extrapolation=args.on_extrapolation)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"slhmc: {err}", file=sys.stderr)
        return 2
    meta = json.loads((out / "md.json").read_text())
    stopped, flagged = stopped_repeats(meta), flagged_repeats(meta)
    if stopped:
        where = ", ".join(f"repeat {rec['repeat']} at step {rec['first_step']}" for rec in stopped)
        print(f"slhmc: MD stopped where the network extrapolates: {where} (--on-extrapolation stop); the files "
              f"end there, the flagged structures are in {out}/repeat_K/extrapolation.extxyz", file=sys.stderr)
        return EXIT_EXTRAPOLATION_STOP
    if flagged:
        where = ", ".join(f"repeat {rec['repeat']} from step {rec['first_step']} ({rec['flagged_steps']} steps)"
                          for rec in flagged)
        print(f"slhmc: warning: the network extrapolated in {where}: results after those steps are not to be "
              f"trusted (see md.json and repeat_K/extrapolation.extxyz)", file=sys.stderr)
    print(f"MD done: {out} (slhmc analyze {out} for the phonon DOS, RDF and MSD)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .config import ConfigError
    from .train import train_model

    if args.threads:
        torch.set_num_threads(args.threads)
    _logging(logging.INFO)
    try:
        metrics = train_model(args.config, args.dataset, args.out, progress=not args.no_progress, device=args.device,
                              seed=args.seed)
    except (ConfigError, ValueError) as err:
        print(f"slhmc: {err}", file=sys.stderr)
        return 2
    train, val = metrics["train"], metrics["validation"]

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    print(f"{metrics['n_labels']} labels ({train['n']} training, {val['n']} validation), {metrics['steps']} L-BFGS "
          f"steps{' (converged)' if metrics['converged'] else ' (max_steps reached)'}, {metrics['seconds']:.1f} s")
    print(f"validation: energy RMSE {fmt(val['energy_rmse_mev_per_atom'])} meV/atom, force RMSE "
          f"{fmt(val['force_rmse_mev_per_A'])} meV/Å (training: {fmt(train['energy_rmse_mev_per_atom'])} meV/atom, "
          f"{fmt(train['force_rmse_mev_per_A'])} meV/Å)")
    print(f"model: {args.out} (slhmc.potential.load_calculator({str(args.out)!r}), or slhmc md {args.out} ...)")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from slhmc.security import create_keys

    d = create_keys(args.dir, args.client)
    print(f"keys in {d}: give the server --keys {d}; copy server.key and {args.client}.key_secret to each "
          f"worker machine (same layout) and give the workers --keys DIR")
    return 0


def cmd_codes(args: argparse.Namespace) -> int:
    from slhmc.clients.references import CODES, code_status
    from slhmc.clients.references.status import install_hint

    missing = []
    for name in CODES:
        ok, detail = code_status(name)
        print(f"{name:<9} {'usable' if ok else 'missing':<8} {detail}")
        if not ok:
            missing.append(name)
    if hint := install_hint(missing):
        print(f"\n{hint}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slhmc", description="Self-learning hybrid Monte Carlo")
    p.add_argument("--version", action="version", version=f"slhmc {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="server and workers on this machine, all in one")
    run.add_argument("config")
    run.add_argument("--out", required=True, help="run directory")
    run.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    run.add_argument("--bind", default=None, help="server address (default: a private ipc:// socket)")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=cmd_run)

    server = sub.add_parser("server", help="the HMC server alone; workers connect to --bind")
    server.add_argument("config")
    server.add_argument("--out", required=True, help="run directory: trials, chain, dataset, models, checkpoint and "
                        "logs go here (created if missing; one that holds a run needs --resume)")
    server.add_argument("--bind", default=DEFAULT_BIND, help=f"ZeroMQ address to bind (default {DEFAULT_BIND})")
    server.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint (settings "
                        "that change what the chain means must stay as in its config.json)")
    server.add_argument("--keys", default=None, help="CurveZMQ key directory (slhmc keys); required off loopback")
    server.add_argument("--address-file", default=None, metavar="FILE",
                        help="once the bind has succeeded, write the address workers pass to --connect into FILE "
                        "(a wildcard host replaced by this host's name); removed when the server exits")
    server.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    server.set_defaults(func=cmd_server)

    worker = sub.add_parser("worker", help="one worker process")
    from slhmc.protocol import ROLES

    worker.add_argument("role", choices=ROLES)
    worker.add_argument("--connect", required=True, help="the server's address, e.g. tcp://host:5555")
    worker.add_argument("--config", default=None, help="local config (dft): its [reference] wins over the server's; "
                        "a file with only [reference] will do")
    worker.add_argument("--name", default=None)
    worker.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    worker.add_argument("--device", default="auto", help="torch device of mlmd/trainer: auto (GPU if any), cpu, cuda")
    worker.add_argument("--timeout", type=float, default=None,
                        help="s of server silence before reconnecting (default: 10 server heartbeats, "
                        "from the server's workers.heartbeat; at least 3)")
    worker.add_argument("--keys", default=None, help="CurveZMQ key directory with server.key, client.key_secret")
    worker.add_argument("--key-name", default="client", help="which NAME.key_secret in --keys (default client)")
    worker.add_argument("--max-idle", type=float, default=0.0,
                        help="s without any server before giving up (default 0: keep trying for ever)")
    worker.set_defaults(func=cmd_worker)

    analyze = sub.add_parser("analyze", help="acceptance, energies and model errors of a run (NPT: volume, density, "
                             "cell); phonon DOS of an md directory; several NPT runs: thermal expansion; --compare: "
                             "g(r) and E_pot against other runs or trajectories (e.g. AIMD)")
    analyze.add_argument("dir", nargs="+", metavar="DIR",
                         help="a run directory (slhmc run/server --out) or an slhmc md --out directory; several NPT "
                         "run directories (one system at different temperatures): each is analysed, then the "
                         "thermal expansion <V>(T), alpha_V and alpha = alpha_V/3 between consecutive temperatures "
                         "is printed and written to expansion.json and expansion.png in --out")
    analyze.add_argument("--out", default=".",
                         help="where expansion.json and expansion.png go with several DIRs (default: the current "
                         "directory)")
    analyze.add_argument("--compare", nargs="+", metavar="OTHER", default=[],
                         help="overlay g(r) per element pair and the E_pot distribution of DIR and each OTHER (a run "
                         "or md directory, or any trajectory ase.io reads; FILE@200: skips its first 200 frames), "
                         "with error bands from block averages; writes compare_rdf.png, compare_epot.png and "
                         "compare.json into DIR and prints the largest difference in units of its error")
    analyze.set_defaults(func=cmd_analyze)
    md = sub.add_parser("md", help="production ML-MD with a trained potential (phonon DOS with slhmc analyze)")
    md.add_argument("model", help="a run directory (its newest model) or a model file")
    md.add_argument("--structure", required=True, help="start structure, any format ase.io.read reads")
    md.add_argument("--temperature", type=float, required=True, help="target temperature, K")
    md.add_argument("--steps", type=int, required=True, help="production MD steps per repeat")
    md.add_argument("--timestep", type=float, default=2.0, help="fs (default %(default)s)")
    md.add_argument("--ensemble", choices=["nve", "nvt"], default="nve",
                    help="production ensemble after Langevin equilibration (default %(default)s: nve is the "
                    "undisturbed dynamics a spectrum needs)")
    md.add_argument("--repeats", type=int, default=1,
                    help="independent repeats, each with its own seed (default %(default)s)")
    md.add_argument("--equilibrate", type=int, default=1000,
                    help="Langevin steps before production (default %(default)s)")
    md.add_argument("--stride", type=int, default=5, help="write a frame every N steps (default %(default)s)")
    md.add_argument("--seed", type=int, default=0,
                    help="random seed; repeat K draws from (SEED, K) (default %(default)s)")
    md.add_argument("--out", required=True, help="output directory (one that holds an MD run is refused)")
    md.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    md.add_argument("--device", default=None, help="cpu, cuda (default: GPU if torch has one)")
    md.add_argument("--on-extrapolation", choices=["warn", "stop"], default="warn",
                    help="when an atom leaves the network's training range: warn (log it, keep going) or stop that "
                         f"repeat there (exit status {EXIT_EXTRAPOLATION_STOP} at the end) (default %(default)s)")
    md.add_argument("--no-progress", action="store_true", help="no progress bar")
    md.set_defaults(func=cmd_md)

    train = sub.add_parser("train", help="fit a network on labelled frames (e.g. a run's dataset.extxyz)")
    train.add_argument("config", help="config file: its [potential] and [training] sections are used")
    train.add_argument("--dataset", required=True, nargs="+", help="labelled frames (energy + forces), any format "
                       "ase.io.read reads; several files are joined")
    train.add_argument("--out", required=True, help="model file to write (.safetensors)")
    train.add_argument("--seed", type=int, default=0, help="keys the validation split and the initial weights")
    train.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    train.add_argument("--device", default=None, help="cpu, cuda (default: GPU if torch has one)")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=cmd_train)

    keys = sub.add_parser("keys", help="make CurveZMQ keys for authenticated, encrypted server-worker traffic")
    keys.add_argument("dir")
    keys.add_argument("--client", default="client", help="name of the worker key pair to add (default client)")
    keys.set_defaults(func=cmd_keys)

    codes = sub.add_parser("codes", help="which reference calculators (DFT codes) work on this machine")
    codes.set_defaults(func=cmd_codes)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
