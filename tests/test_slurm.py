"""run_scripts/slurm on a real Slurm: a single-node cluster (munged, slurmctld, slurmd from Debian's
``slurm-wlm`` and ``munge``) started here in a temporary directory, the project's own batch scripts
submitted with ``sbatch`` as run_scripts/slurm/README.md says, a Cu32/EMT run over CurveZMQ to the
end with one DFT array task cancelled on the way, and nothing left running afterwards.

The packages are installed when missing (as root, with apt-get); the tests skip, saying why, only
where they cannot be installed or run (not root, no apt-get, the daemons do not start, no venv with
slhmc for the jobs). Every daemon and job process of this cluster
carries ``SLHMC_TEST_SLURM=<its directory>`` in its environment: that is how the teardown finds what
to stop, by PID, whatever happened to the test."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from slhmc.rundir import read_events

from .conftest import ROOT
from .runs import check_run, free_port, write_config

SCRIPTS = ROOT / "run_scripts" / "slurm"
VENV = Path(os.environ.get("SLHMC_VENV", ROOT / ".venv"))
PACKAGES = ["slurm-wlm", "munge"]
COMMANDS = ["sbatch", "squeue", "scancel", "sinfo", "slurmctld", "slurmd", "munged", "munge"]
PARTITION = "debug"
MARKER = "SLHMC_TEST_SLURM"


def _missing() -> list[str]:
    return [c for c in COMMANDS if shutil.which(c) is None and not Path("/usr/sbin", c).exists()]


def _install() -> str | None:
    """None when Slurm and munge are here (installing them if need be) and can run; else why not."""
    if os.geteuid() != 0:  # slurmd starts the jobs, so it runs as root
        return "not root: slurmd (and apt-get install of slurm-wlm munge) need root"
    if not _missing():
        return None
    if shutil.which("apt-get") is None:
        return f"Slurm/munge not installed ({', '.join(_missing())} missing) and no apt-get here"
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], capture_output=True, text=True, env=apt_env,
                          timeout=900)
    if proc.returncode != 0:  # package lists out of date: once more after an update
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=apt_env, timeout=900)
        proc = subprocess.run(["apt-get", "install", "-y", "-q", *PACKAGES], capture_output=True, text=True,
                              env=apt_env, timeout=900)
    if proc.returncode != 0 or _missing():
        return f"apt-get install {' '.join(PACKAGES)} failed (status {proc.returncode}): {proc.stderr[-500:]}"
    return None


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in _stat_state(pid)


def _stat_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


class Cluster:
    """A single-node Slurm in ``dir``: the node is this machine as ``slurmd -C`` reports it (its CPUs and
    memory), in one partition that lets jobs share CPUs (a small machine runs server and workers at once);
    no cgroups (proctrack/linuxproc, task/none), no accounting."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        self.env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf"), MARKER: str(root)}
        self.node = ""
        self.cpus = 1

    # -- start / stop ------------------------------------------------------------------------------
    def start(self) -> str | None:
        """Start munged, slurmctld, slurmd; None when the node is idle, else why not."""
        d = self.dir
        for sub in ("state", "spool", "log"):
            (d / sub).mkdir()
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = d / "munge.sock"
        munged = subprocess.run([_sbin("munged"), f"--socket={sock}", f"--key-file={key}", f"--pid-file={d}/munged.pid",
                                 f"--log-file={d}/log/munged.log", f"--seed-file={d}/munged.seed"],
                                env=self.env, capture_output=True, text=True, timeout=30)
        if munged.returncode != 0:
            return f"munged did not start: {munged.stderr.strip()[-300:]}"
        probe = subprocess.run(f"munge -n -S {sock} | unmunge -S {sock}", shell=True, capture_output=True, text=True,
                               timeout=30)
        if "Success" not in probe.stdout:
            return f"munge does not work: {probe.stderr.strip()[-300:]}"
        hw = subprocess.run([_sbin("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
        node_line = next((line for line in hw.splitlines() if line.startswith("NodeName=")), "")
        fields = dict(f.split("=", 1) for f in node_line.split())
        self.node, self.cpus = fields.get("NodeName", ""), int(fields.get("CPUs", "1"))
        if not self.node:
            return f"slurmd -C printed no NodeName line: {hw!r}"
        ctld_port = free_port()
        slurmd_port = next(port for port in iter(free_port, None) if port != ctld_port)
        conf = f"""ClusterName=slhmctest
SlurmctldHost={self.node}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=10
SchedulerParameters=bf_interval=1
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MailProg=/bin/true
{node_line} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""
        (d / "slurm.conf").write_text(conf)
        for daemon in ("slurmctld", "slurmd"):
            proc = subprocess.run([_sbin(daemon), "-f", str(d / "slurm.conf")], env=self.env, capture_output=True,
                                  text=True, timeout=60)
            if proc.returncode != 0:
                return f"{daemon} did not start: {proc.stderr.strip()[-300:]} {self.logs()}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip()
            if state == "idle":
                return None
            time.sleep(0.2)
        return f"the node is not idle after 60 s (sinfo: {state!r}) {self.logs()}"

    def processes(self) -> dict[int, list[str]]:
        """Every process of this cluster (daemons, job steps, job processes): PID -> its argv."""
        needle = f"{MARKER}={self.dir}\0".encode()
        found = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                if needle in (proc / "environ").read_bytes() + b"\0":
                    found[int(proc.name)] = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
            except OSError:  # gone meanwhile, or not ours to read
                pass
        return found

    def stop(self) -> None:
        """Cancel every job, stop the daemons by their PIDs, then kill whatever of this cluster is left."""
        if (self.dir / "slurm.conf").exists() and (self.dir / "slurmctld.pid").exists():
            jobs = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if jobs:
                self.run("scancel", *jobs, check=False)
                self.wait_for_no_jobs(30, check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.dir / f"{name}.pid"
            if pid_file.exists() and pid_file.read_text().strip().isdigit():
                _terminate(int(pid_file.read_text().strip()))
        for pid in self.processes():  # job processes a stopped slurmd no longer tracks
            _terminate(pid, grace_s=2)

    # -- Slurm commands --------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, cwd: Path | None = None, env: dict | None = None,
            ) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env={**self.env, **(env or {})}, cwd=cwd, capture_output=True, text=True,
                              timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)}: status {proc.returncode}: {proc.stderr} {self.logs()}")
        return proc

    def sbatch(self, *args: str, cwd: Path, env: dict) -> str:
        """``sbatch --parsable ARGS`` from ``cwd``: the job id."""
        return self.run("sbatch", "--parsable", *args, cwd=cwd, env=env).stdout.strip().split(";")[0]

    def jobs(self) -> list[str]:
        """squeue's lines: JOBID STATE REASON."""
        return self.run("squeue", "-h", "-o", "%i %T %r").stdout.splitlines()

    def state(self, job: str) -> tuple[str, str]:
        """(JobState, ExitCode) of a job the controller still remembers (MinJobAge, 300 s)."""
        fields = dict(f.split("=", 1) for f in self.run("scontrol", "-o", "show", "job", job).stdout.split()
                      if "=" in f)
        return fields["JobState"], fields["ExitCode"]

    def wait_for_no_jobs(self, timeout_s: float, check: bool = True) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.run("squeue", "-h", "-o", "%i %T %r", check=False)
            if proc.returncode == 0 and not proc.stdout.strip():
                return
            time.sleep(0.5)
        if check:
            raise AssertionError(f"jobs still queued after {timeout_s} s: {self.jobs()}")

    def logs(self) -> str:
        out = []
        for log in sorted((self.dir / "log").glob("*.log")):
            out.append(f"\n--- {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        return "".join(out)


def _terminate(pid: int, grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``: one process, by its PID."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def slurm():
    if reason := _install():
        pytest.skip(reason)
    if not (VENV / "bin" / "activate").exists():
        pytest.skip(f"no virtual environment with slhmc at {VENV} for the jobs (set SLHMC_VENV)")
    # munged wants every directory above its socket searchable by all: not pytest's 0700 tmp_path
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="slhmc-slurm-")))
    cluster.dir.chmod(0o755)
    try:
        if reason := cluster.start():
            pytest.skip(f"a single-node Slurm does not start here: {reason}")
        yield cluster
    finally:
        cluster.stop()
        left = cluster.processes()
        shutil.rmtree(cluster.dir, ignore_errors=True)
        assert not left, f"processes of the test's Slurm still alive after the teardown: {left}"


def _job_env(work: Path, **extra: str) -> dict[str, str]:
    """What README tells users to set: the venv, the key directory, the server's port (and here, to be
    quick, the workers' poll interval)."""
    return {"SLHMC_VENV": str(VENV), "SLHMC_KEYS": str(work / "keys"), "SLHMC_PORT": str(free_port()),
            "SLHMC_POLL_S": "1", **extra}


def _out(work: Path, job: str) -> str:
    path = work / f"slurm-{job}.out"
    return path.read_text(errors="replace") if path.exists() else f"(no {path.name})"


def _outputs(work: Path) -> str:
    return "".join(f"\n--- {p.name}:\n{p.read_text(errors='replace')[-3000:]}"
                   for p in sorted(work.glob("slurm-*.out")))


DAEMONS = ("slurmctld", "slurmd", "slurmstepd", "munged")


def _jobs_left(cluster: Cluster, timeout_s: float = 20) -> dict[int, str]:
    """Processes of this cluster's jobs (slhmc, the scripts' shells) still alive ``timeout_s`` after the
    last job left the queue; the daemons do not count."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = {pid: " ".join(argv) for pid, argv in cluster.processes().items()
                if argv and not Path(argv[0].split(":")[0]).name.startswith(DAEMONS)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _n_trials(run: Path) -> int:
    """Finished trials so far (complete lines of trials.jsonl: the server may be writing the next)."""
    path = run / "trials.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def test_a_run_on_slurm_with_one_dft_task_cancelled(slurm, tmp_path):
    """README's run: keys, the server job, a 2-task DFT worker array and the ML job (after the server
    has started), over CurveZMQ to the server bound on all interfaces. After the first trial one DFT
    array task is cancelled: the run finishes with the other, every trial once."""
    work = tmp_path  # the folder the user runs in: config.toml, keys, runs/x, slurm-*.out
    trials, bootstrap = 30, 8
    # one fit (the bootstrap's): a trainer told to stop finishes a fit it has begun first, which
    # here would only make the ML job outlive the server by that fit
    write_config(work, trials=trials, dft=2, calculator="slhmc.validation:delayed_emt",
                 options="[reference.options]\ndelay_s = 0.4", timeout=5.0, interval=1000)
    keys = subprocess.run([str(VENV / "bin" / "slhmc"), "keys", str(work / "keys")], capture_output=True, text=True,
                          timeout=120)
    assert keys.returncode == 0, keys.stderr
    env = _job_env(work)
    t0 = time.monotonic()
    part = f"--partition={PARTITION}"
    server = slurm.sbatch(part, str(SCRIPTS / "server.sbatch"), "config.toml", "runs/x", cwd=work, env=env)
    after = f"--dependency=after:{server}"
    # this node's CPUs, not the scripts' 16 ranks / 4 CPUs; no GPU here: --gres=none, as README says
    dft = slurm.sbatch(part, after, "--ntasks=1", "--array=0-1", str(SCRIPTS / "dft_workers.sbatch"), "runs/x",
                       cwd=work, env=env)
    ml = slurm.sbatch(part, after, "--gres=none", f"--cpus-per-task={min(4, slurm.cpus)}",
                      str(SCRIPTS / "ml_workers.sbatch"), "runs/x", cwd=work, env=env)
    run = work / "runs" / "x"
    try:
        deadline = time.monotonic() + 180
        while not _n_trials(run):
            assert time.monotonic() < deadline, f"no trial after 180 s: {slurm.jobs()}{_outputs(work)}"
            assert slurm.jobs(), f"every job ended before the first trial{_outputs(work)}"
            time.sleep(0.2)
        cancelled_at = _n_trials(run)
        slurm.run("scancel", f"{dft}_1")
        slurm.wait_for_no_jobs(240)
        wall_s = time.monotonic() - t0
    except BaseException:
        print(_outputs(work), slurm.logs())
        raise
    outputs = _outputs(work)
    assert cancelled_at < trials // 2, f"the cancel came too late to be mid-run: trial {cancelled_at}"
    assert f"done: {trials} trials" in _out(work, server), outputs
    assert (run / "server.exit").read_text().split() == ["0", server], outputs
    assert not (run / "server.address").exists()
    check_run(run, trials=trials, bootstrap=bootstrap)
    events = read_events(run)
    lost = [e for e in events if e["event"] == "lost"]
    assert [e["worker"] for e in lost] == [f"dft-1-{slurm.node}"] and lost[0]["role"] == "dft", (lost, outputs)
    joined = {e["worker"] for e in events if e["event"] == "joined"}
    assert joined == {f"dft-0-{slurm.node}", f"dft-1-{slurm.node}", f"mlmd-{slurm.node}", f"trainer-{slurm.node}"}
    assert "CurveZMQ on" in _out(work, server)
    for job in (f"{dft}_0", ml):
        assert "server says shut down: run finished" in _out(work, job), outputs
    states = {job: slurm.state(job) for job in (server, f"{dft}_0", f"{dft}_1", ml)}
    assert states == {server: ("COMPLETED", "0:0"), f"{dft}_0": ("COMPLETED", "0:0"),
                      f"{dft}_1": ("CANCELLED", "0:15"), ml: ("COMPLETED", "0:0")}, (states, outputs)
    assert not slurm.jobs()
    assert not _jobs_left(slurm), outputs
    # the user's last step: the analysis of the finished run, from the same folder
    analyze = subprocess.run([str(VENV / "bin" / "slhmc"), "analyze", "runs/x"], cwd=work, capture_output=True,
                             text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert analyze.returncode == 0, analyze.stderr
    assert f"{trials} trials" in analyze.stdout and (run / "summary.json").exists()
    print(f"run on Slurm: {wall_s:.0f} s from the first sbatch to an empty queue; cancelled at trial {cancelled_at}")


def test_a_failed_server_job_says_why_and_its_workers_end(slurm, tmp_path):
    """A server job that cannot start its run says why in its output, and a worker job waiting for its
    address ends (saying why) instead of holding a node until its walltime."""
    work = tmp_path
    env = _job_env(work, SLHMC_KEYS=str(work / "no-keys"))
    part = f"--partition={PARTITION}"
    server = slurm.sbatch(part, str(SCRIPTS / "server.sbatch"), "missing.toml", "runs/x", cwd=work, env=env)
    dft = slurm.sbatch(part, f"--dependency=after:{server}", "--ntasks=1", str(SCRIPTS / "dft_workers.sbatch"),
                       "runs/x", cwd=work, env=env)
    no_venv = slurm.sbatch(part, "--ntasks=1", str(SCRIPTS / "dft_workers.sbatch"), "runs/x", cwd=work,
                           env={**env, "SLHMC_VENV": str(work / "no-venv")})
    slurm.wait_for_no_jobs(120)
    outputs = _outputs(work)
    assert "missing.toml does not exist" in _out(work, server), outputs
    assert "ended with status 2" in _out(work, server), outputs
    assert f"the server (job {server}) ended with status 2" in _out(work, dft), outputs
    assert f"no Python environment at {work / 'no-venv'}" in _out(work, no_venv), outputs
    states = {job: slurm.state(job) for job in (server, dft, no_venv)}
    assert states == {server: ("FAILED", "2:0"), dft: ("FAILED", "1:0"), no_venv: ("FAILED", "2:0")}, states
    assert not _jobs_left(slurm)


def test_a_cancelled_server_job_ends_its_workers(slurm, tmp_path):
    """scancel (as the time limit) stops the server: it says how to continue, and its connected
    worker's job ends too instead of waiting for a server that is not coming."""
    work = tmp_path
    write_config(work, trials=200)
    keys = subprocess.run([str(VENV / "bin" / "slhmc"), "keys", str(work / "keys")], capture_output=True, text=True,
                          timeout=120)
    assert keys.returncode == 0, keys.stderr
    env = _job_env(work)
    part = f"--partition={PARTITION}"
    server = slurm.sbatch(part, str(SCRIPTS / "server.sbatch"), "config.toml", "runs/x", cwd=work, env=env)
    dft = slurm.sbatch(part, f"--dependency=after:{server}", "--ntasks=1", str(SCRIPTS / "dft_workers.sbatch"),
                       "runs/x", cwd=work, env=env)
    run = work / "runs" / "x"
    deadline = time.monotonic() + 120
    while not ((run / "events.jsonl").exists() and "joined" in (run / "events.jsonl").read_text()):
        assert time.monotonic() < deadline and slurm.jobs(), f"the DFT worker did not join{_outputs(work)}"
        time.sleep(0.2)
    slurm.run("scancel", server)
    slurm.wait_for_no_jobs(120)
    outputs = _outputs(work)
    assert "stopped by a signal (walltime or scancel)" in _out(work, server), outputs
    assert "sbatch server.sbatch config.toml runs/x --resume" in _out(work, server), outputs
    assert (run / "server.exit").read_text().split() == ["130", server], outputs
    assert slurm.state(dft) == ("COMPLETED", "0:0"), outputs
    assert "interrupted" in (run / "server.log").read_text()
    assert not _jobs_left(slurm)
