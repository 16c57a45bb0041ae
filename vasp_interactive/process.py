"""Launching, signalling, pausing and reaping the VASP process tree. One job per class.

* VASP starts in its own session (``start_new_session``), so every process it spawns, MPI ranks
  included, can be found by session id even after the launcher dies.
* On Linux the launcher gets a parent-death signal (SIGTERM) tied to a long-lived daemon thread,
  so a Python driver killed with SIGKILL leaves nothing running.
* Pausing stops the ranks (SIGTSTP through Open MPI's launcher, SIGSTOP to each local process, or
  ``scancel --signal`` on a Slurm step) and checks that they really stopped.
"""

from __future__ import annotations

import ctypes
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import slurm
from .errors import VaspSetupError, VaspStartError
from .settings import PauseSettings

_PR_SET_PDEATHSIG = 1


def _libc_function(name: str) -> Callable | None:
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_function("prctl") if os.name == "posix" and os.uname().sysname == "Linux" else None
_SIGNAL = _libc_function("signal") if os.name == "posix" else None
if _SIGNAL is not None:
    _SIGNAL.argtypes = (ctypes.c_int, ctypes.c_void_p)
    _SIGNAL.restype = ctypes.c_void_p


def _child_setup(parent_pid: int) -> Callable[[], None] | None:
    if _PRCTL is None:
        return None

    def setup() -> None:  # runs in the child between fork and exec: keep it minimal
        if _SIGNAL is not None:  # a driver started with '&' ignores SIGINT; VASP must not (ML stop)
            _SIGNAL(signal.SIGINT, None)  # SIG_DFL; Python's signal() cannot run off the main thread
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return setup


class _LauncherThread:
    """Runs ``Popen`` in one daemon thread that lives as long as the interpreter.

    The parent-death signal fires when the *thread* that forked the child ends, so launching
    from a short-lived worker thread (Dask, a thread pool) would kill VASP when that thread exits.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _loop(self) -> None:
        while True:
            function, reply = self._jobs.get()
            try:
                reply.put((True, function()))
            except BaseException as error:  # noqa: BLE001 - handed back to the caller
                reply.put((False, error))

    def run(self, function: Callable):
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="vasp-launcher", daemon=True)
                self._thread.start()
        reply: queue.Queue = queue.Queue(maxsize=1)
        self._jobs.put((function, reply))
        ok, value = reply.get()
        if ok:
            return value
        raise value


_LAUNCHER = _LauncherThread()


def resolve_command(command: str | Sequence[str]) -> list[str]:
    """Split a command and check that its executable exists, before anything expensive starts."""
    import shlex

    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise VaspSetupError("the VASP command is empty; pass command= or set ASE_VASP_COMMAND")
    if shutil.which(argv[0]) is None:
        raise VaspSetupError(
            f"VASP command not found: '{argv[0]}' (from {' '.join(argv)!r}); pass command= to the "
            "calculator or set ASE_VASP_COMMAND / VASP_COMMAND to a command that exists on PATH"
        )
    return argv


# Runs in its own small process: waits until the driver's end of a pipe closes (the driver ended
# VASP, or died in any way, SIGKILL included), then clears VASP's session: SIGCONT (a paused rank
# ignores SIGTERM), SIGTERM, and SIGKILL after a grace period; then scancels a named Slurm step.
_WATCHDOG = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
fd, sid, grace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
while os.read(fd, 4096):
    pass
def members():
    found = []
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                with open('/proc/' + name + '/stat') as handle:
                    fields = handle.read().rsplit(')', 1)[1].split()
                if int(fields[3]) == sid and fields[0] != 'Z':
                    found.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return found
alive = members()
for signum in (signal.SIGCONT, signal.SIGTERM):
    for pid in alive:
        try:
            os.kill(pid, signum)
        except OSError:
            pass
deadline = time.monotonic() + grace
while alive and time.monotonic() < deadline:
    time.sleep(0.05)
    alive = members()
for pid in alive:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
if len(sys.argv) > 4:  # a Slurm step: its tasks are not in the session
    import subprocess
    try:
        listed = subprocess.run(['squeue', '--noheader', '--steps', '--jobs', os.environ.get('SLURM_JOB_ID', ''),
                                 '--format=%i %j'], capture_output=True, text=True, timeout=30).stdout
        for line in listed.splitlines():
            fields = line.split(None, 1)
            if len(fields) == 2 and fields[1].strip() == sys.argv[4]:
                subprocess.run(['scancel', fields[0]], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pass
"""


class VaspProcess:
    """One launched VASP command (launcher and ranks) in its own session."""

    def __init__(self, argv: Sequence[str], directory: Path, env: dict[str, str] | None = None,
                 watchdog_grace: float = 5.0):
        self.argv, self.slurm_step_name = slurm.name_step(argv)
        self.directory = Path(directory)
        self.env = env
        self.popen: subprocess.Popen | None = None
        self.started_at = 0.0
        self.watchdog_grace = watchdog_grace
        self.killed_when_reaped = False  # reap() had to kill it: it kept running after its stdout closed
        self._watchdog: subprocess.Popen | None = None
        self._watchdog_pipe: int | None = None

    def start(self) -> None:
        parent = os.getpid()

        def launch() -> subprocess.Popen:
            return subprocess.Popen(
                self.argv,
                cwd=self.directory,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_child_setup(parent),
                bufsize=0,
            )

        try:
            self.popen = _LAUNCHER.run(launch)
        except OSError as error:
            raise VaspStartError(f"could not launch {' '.join(self.argv)!r}: {error}") from error
        self.started_at = time.monotonic()
        self._start_watchdog()

    def _start_watchdog(self) -> None:
        """A sidecar that clears VASP's session if this Python process disappears."""
        if not os.path.isdir("/proc"):
            return
        import sys

        read_end, write_end = os.pipe()
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(read_end), str(self.pid),
                 str(self.watchdog_grace), *([self.slurm_step_name] if self.slurm_step_name else [])],
                pass_fds=(read_end,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
            self._watchdog_pipe = write_end
        except OSError:
            os.close(write_end)
        finally:
            os.close(read_end)

    def _release_watchdog(self, timeout: float) -> None:
        """Tell the sidecar this driver is done with VASP (it then clears leftovers and exits)."""
        if self._watchdog_pipe is not None:
            os.close(self._watchdog_pipe)
            self._watchdog_pipe = None
        if self._watchdog is not None:
            try:
                self._watchdog.wait(timeout=timeout + self.watchdog_grace)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def write(self, text: str) -> None:
        assert self.popen is not None and self.popen.stdin is not None
        self.popen.stdin.write(text.encode())
        self.popen.stdin.flush()

    # -- the process tree -------------------------------------------------------------
    def session_processes(self) -> list[psutil.Process]:
        """Every live process of VASP's session: launcher, helpers and ranks (even orphaned)."""
        if self.popen is None:
            return []
        found: dict[int, psutil.Process] = {}
        try:
            root = psutil.Process(self.pid)
            found[root.pid] = root
            for child in root.children(recursive=True):
                found[child.pid] = child
        except psutil.NoSuchProcess:
            pass
        for process in psutil.process_iter():
            try:
                if process.pid not in found and os.getsid(process.pid) == self.pid:
                    found[process.pid] = process
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return [p for p in found.values() if _is_alive(p)]

    def rank_processes(self) -> list[psutil.Process]:
        """The local compute processes: those of the session that spawned nothing themselves."""
        return leaf_processes(self.session_processes())

    def signal_session(self, signum: int) -> None:
        """Send ``signum`` to the whole session (the launcher's group and every rank's group)."""
        for process in self.session_processes():
            try:
                process.send_signal(signum)
            except psutil.Error:
                continue

    def terminate(self, grace: float) -> int | None:
        """SIGTERM the session, then SIGKILL what is left (captured before anything died); reap."""
        if self.popen is None:
            return None
        captured = self.session_processes()
        for process in captured:
            try:
                process.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            except psutil.Error:
                pass
        if self.alive:
            self.signal_session(signal.SIGTERM)
        _, alive = psutil.wait_procs([p for p in captured if p.pid != self.pid], timeout=0)
        deadline = time.monotonic() + grace
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        remaining = max(0.0, deadline - time.monotonic())
        _, alive = psutil.wait_procs([p for p in captured if p.pid != self.pid], timeout=remaining)
        leftovers = alive + [p for p in self.session_processes() if p not in alive]
        if self.alive:
            leftovers.append(psutil.Process(self.pid))
        for process in leftovers:
            try:
                process.kill()
            except psutil.Error:
                pass
        self.reap(grace)
        psutil.wait_procs([p for p in leftovers if p.pid != self.pid], timeout=grace)
        if self.slurm_step_name is not None:
            slurm.cancel_step(self.slurm_step_name)  # the step's tasks are not in this session
        self._release_watchdog(grace)
        return self.returncode

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code if the launcher ends within ``timeout``, else None (nothing is killed)."""
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None

    def reap(self, timeout: float) -> int | None:
        """Collect the launcher's exit status (only ``Popen`` reaps it, so the code stays true)."""
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.killed_when_reaped = True  # it outlived its stdout: see VaspSession's EOF handling
            self.popen.kill()
            return self.popen.wait(timeout=timeout)

    def close_pipes(self) -> None:
        """Close VASP's stdin (the readers of stdout and stderr finish on their own at EOF)."""
        if self.popen is None:
            return
        for stream in (self.popen.stdin,):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    def close_output_pipes(self) -> None:
        """Close our ends of stdout and stderr once their reader threads are done (no fd left open)."""
        if self.popen is None:
            return
        for stream in (self.popen.stdout, self.popen.stderr):
            try:
                if stream is not None and not stream.closed:
                    stream.close()
            except (OSError, ValueError):
                pass


def leaf_processes(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` that are no other's parent (the compute ranks, not launchers or wrappers)."""
    parents = set()
    for process in processes:
        try:
            parents.add(process.ppid())
        except psutil.Error:
            continue
    return [p for p in processes if p.pid not in parents] or processes


def _is_alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ---------------------------------------------------------------------------- pausing
@dataclass(frozen=True)
class PauseReport:
    """What a pause or resume did, stated honestly."""

    paused: bool
    strategy: str
    verified: bool
    ranks_stopped: int
    ranks_seen: int
    seconds: float
    note: str = ""


@dataclass(frozen=True)
class PauseHandle(PauseReport):
    """A :class:`PauseReport` that is also a context manager: leaving the block releases the pause."""

    release: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def __enter__(self) -> PauseHandle:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.release is not None:
            self.release()


class PauseStrategy(ABC):
    name = "abstract"

    @abstractmethod
    def pause(self, process: VaspProcess) -> None: ...

    @abstractmethod
    def resume(self, process: VaspProcess) -> None: ...

    def ranks(self, process: VaspProcess) -> list[psutil.Process]:
        """The local compute processes whose state tells whether the pause worked."""
        return process.rank_processes()


class OpenMpiLauncherSignal(PauseStrategy):
    """SIGTSTP to Open MPI's ``mpirun``, which stops its ranks with SIGSTOP; SIGCONT resumes."""

    name = "openmpi"

    def pause(self, process: VaspProcess) -> None:
        os.kill(process.pid, signal.SIGTSTP)

    def resume(self, process: VaspProcess) -> None:
        os.kill(process.pid, signal.SIGCONT)


class LocalProcessSignal(PauseStrategy):
    """SIGSTOP / SIGCONT to every local process of the run (any launcher, this node only).

    ``targets`` replaces the session's ranks (a Slurm step's tasks live outside the session).
    """

    name = "psutil"

    def __init__(self, targets: Callable[[VaspProcess], list[psutil.Process]] | None = None) -> None:
        self.targets = targets

    def ranks(self, process: VaspProcess) -> list[psutil.Process]:
        return self.targets(process) if self.targets else process.rank_processes()

    def pause(self, process: VaspProcess) -> None:
        for rank in self.ranks(process):
            try:
                rank.suspend()
            except psutil.Error:
                continue

    def resume(self, process: VaspProcess) -> None:
        members = process.session_processes() + (self.targets(process) if self.targets else [])
        for member in members:
            try:
                member.resume()
            except psutil.Error:
                continue


class SlurmStepSignal(PauseStrategy):
    """``scancel --signal=STOP|CONT <job>.<step>`` for ranks that may live on other nodes.

    The step is found by the name given to this run's ``srun`` (see :mod:`.slurm`); only the tasks on
    this node can be checked, so a pause of a step with no local task is reported unverified.
    """

    name = "slurm"

    def __init__(self) -> None:
        self.step: str | None = None
        self._tasks: list[psutil.Process] | None = None

    def _find_step(self, process: VaspProcess) -> str:
        if self.step is None:
            self.step = slurm.find_step(process.slurm_step_name)
        return self.step

    def ranks(self, process: VaspProcess) -> list[psutil.Process]:
        if self._tasks is None:
            self._tasks = leaf_processes(slurm.local_tasks(self._find_step(process)))
        return [task for task in self._tasks if _is_alive(task)]

    def pause(self, process: VaspProcess) -> None:
        slurm.signal_step(self._find_step(process), "STOP")

    def resume(self, process: VaspProcess) -> None:
        slurm.signal_step(self._find_step(process), "CONT")


def choose_strategy(process: VaspProcess, settings: PauseSettings) -> PauseStrategy | None:
    method = settings.method
    if method == "none":
        return None
    if method == "slurm" or (method == "auto" and _uses_slurm(process.argv)):
        return SlurmStepSignal()
    if method == "openmpi" or (method == "auto" and _is_open_mpi_launcher(process)):
        return OpenMpiLauncherSignal()
    return LocalProcessSignal()


def _uses_slurm(argv: Sequence[str]) -> bool:
    return slurm.is_srun(argv) and slurm.in_allocation() and shutil.which("scancel") is not None


def _is_open_mpi_launcher(process: VaspProcess) -> bool:
    try:
        name = psutil.Process(process.pid).name()
    except psutil.Error:
        return False
    return name in ("prterun", "orterun", "mpirun", "mpiexec") and _open_mpi_flavour(process.argv[0])


def _open_mpi_flavour(launcher: str) -> bool:
    path = shutil.which(launcher)
    if path is None:
        return False
    real = os.path.realpath(path)
    if os.path.basename(real) in ("prterun", "orterun"):
        return True
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Open MPI" in version or "OpenRTE" in version or "PRRTE" in version


RankFinder = Callable[[VaspProcess], list[psutil.Process]]


def stopped_ranks(process: VaspProcess, ranks_of: RankFinder | None = None) -> tuple[int, int]:
    """How many of the run's local ranks are stopped, and how many there are."""
    ranks = (ranks_of or VaspProcess.rank_processes)(process)
    stopped = 0
    for rank in ranks:
        try:
            if rank.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
                stopped += 1
        except psutil.Error:
            continue
    return stopped, len(ranks)


def wait_for_rank_state(process: VaspProcess, want_stopped: bool, timeout: float,
                        ranks_of: RankFinder | None = None) -> tuple[int, int]:
    """Poll the local ranks' scheduler state (there is no event for another process stopping)."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        stopped, seen = stopped_ranks(process, ranks_of)
        done = stopped == seen if want_stopped else stopped == 0
        if done or time.monotonic() >= deadline:
            return stopped, seen
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
