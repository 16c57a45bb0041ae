"""A private one-node Slurm cluster for the test session (real ``slurmctld``, ``slurmd`` and ``munged``).

Everything lives in one temporary folder: configuration, state and spool directories, logs, its
own munge key and socket; the daemons listen on free ports and run in the foreground as children
of the test process, so they are stopped by pid (SIGTERM, then SIGKILL) when the session ends.
Clients (``srun``, ``squeue``, ``scancel``, ``sbatch``) find it through ``SLURM_CONF``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
INSTALL_HINT = "apt-get install slurm-wlm munge libpmix-dev (make test does this where apt is available)"


def missing_programs() -> list[str]:
    wanted = [*DAEMONS, "srun", "squeue", "scancel", "sinfo", "salloc", "sbatch"]
    found = {name: shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") for name in wanted}
    return [name for name, path in found.items() if path is None]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """The kernel sends SIGTERM to the daemon when the test process dies, even by SIGKILL."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def _sbin(name: str) -> str:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") or name


@dataclass
class SlurmCluster:
    root: Path
    cpus: int = 8  # more than the machine has (config_overrides): concurrent steps in one allocation
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a client needs to reach this cluster (and nothing else)."""
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 60.0) -> None:
        for sub in ("etc", "state", "spool", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        munge = self.root / "munge"
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge.chmod(0o700)
        self.socket = munge / "munge.socket"
        self._spawn("munged", [_sbin("munged"), "--foreground", "--force", f"--socket={self.socket}",
                               f"--key-file={key}", f"--pid-file={munge / 'munged.pid'}",
                               f"--seed-file={munge / 'munged.seed'}", f"--log-file={self.root / 'log/munged.log'}"])
        self._wait(lambda: self.socket.exists(), timeout, "munged did not create its socket")
        host = socket.gethostname()
        self.conf.write_text(f"""ClusterName=vitest
SlurmctldHost={host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={self.root / 'slurmctld.pid'}
SlurmdPidFile={self.root / 'slurmd.pid'}
SlurmctldLogFile={self.root / 'log/slurmctld.log'}
SlurmdLogFile={self.root / 'log/slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
KillWait=5
InactiveLimit=0
MinJobAge=30
NodeName={host} CPUs={self.cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")
        env = {**os.environ, **self.env}
        self._spawn("slurmctld", [_sbin("slurmctld"), "-D", "-i", "-f", str(self.conf)], env)
        self._spawn("slurmd", [_sbin("slurmd"), "-D", "-f", str(self.conf)], env)
        self._wait(lambda: self.node_state() in ("idle", "mixed", "allocated"), timeout,
                   "the node did not become idle")

    def _spawn(self, name: str, argv: list[str], env=None) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "w")
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True, preexec_fn=_die_with_parent)
        log.close()

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}): {self.log(name)}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} within {timeout} s: {self.log('slurmctld')} {self.log('slurmd')}")

    def log(self, name: str, lines: int = 15) -> str:
        texts = []
        for path in (self.root / "log" / f"{name}.log", self.root / "log" / f"{name}.stdout"):
            if path.exists():
                texts.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(texts)

    def run(self, *argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env})
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def node_state(self) -> str:
        done = self.run("sinfo", "-h", "-o", "%T", check=False)
        return done.stdout.strip().rstrip("*~#") if done.returncode == 0 else ""

    def allocate(self, tasks: int, timeout: float = 60.0) -> str:
        """A job allocation without a shell (``salloc --no-shell``): its job id."""
        done = self.run("salloc", "--no-shell", "-n", str(tasks), "-J", "vitest-alloc", timeout=timeout)
        match = re.search(r"job allocation (\d+)", done.stderr + done.stdout)
        if match is None:
            raise RuntimeError(f"salloc said: {done.stderr}")
        return match.group(1)

    def steps(self, job: str) -> list[str]:
        """Step ids Slurm reports for ``job`` (``squeue -s``), the extern/batch steps left out."""
        done = self.run("squeue", "-h", "-s", "-j", job, "-o", "%i %j", check=False)
        return [line.split()[0] for line in done.stdout.splitlines()
                if line.strip() and not line.split()[0].endswith((".extern", ".batch", ".interactive"))]

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            jobs = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if jobs:
                self.run("scancel", *jobs, check=False)
        for name in reversed(DAEMONS):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
