"""Launching, signalling and reaping one VASP command (launcher and ranks).

* VASP starts in its own session (``start_new_session``), so every process it spawns, MPI ranks
  included, can be found by session id even after the launcher dies.
* On Linux the launcher gets a parent-death signal (SIGTERM) tied to a long-lived daemon thread,
  so a Python driver killed with SIGKILL leaves nothing running; a watchdog program
  (:mod:`.watchdog`) clears what the parent-death signal cannot reach (stopped ranks, orphans, a
  Slurm step) and the launch's private temporary directory.
* Each launch on this node only gets a private ``TMPDIR`` (inside the current one), so Open MPI's
  session directory goes where this package can remove it, whatever way the run ends. Not under
  ``srun`` or in a multi-node allocation: Slurm hands ``TMPDIR`` to nodes where it does not exist.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from ..errors import VaspSetupError, VaspStartError
from . import slurm, tree, watchdog

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
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise VaspSetupError("the VASP command is empty; pass command= or set ASE_VASP_COMMAND")
    if shutil.which(argv[0]) is None:
        raise VaspSetupError(
            f"VASP command not found: '{argv[0]}' (from {' '.join(argv)!r}); pass command= to the "
            "calculator or set ASE_VASP_COMMAND / VASP_COMMAND to a command that exists on PATH"
        )
    return argv


def make_private_tmpdir(env: dict[str, str] | None) -> str | None:
    """A fresh directory inside the child's ``TMPDIR`` (or the system's), or ``None`` if none can be made."""
    base = (env if env is not None else os.environ).get("TMPDIR") or tempfile.gettempdir()
    try:
        return tempfile.mkdtemp(prefix=watchdog.PRIVATE_TMPDIR_PREFIX, dir=base)
    except OSError:
        return None


class VaspProcess:
    """One launched VASP command (launcher and ranks) in its own session."""

    def __init__(self, argv: Sequence[str], directory: Path, env: dict[str, str] | None = None,
                 watchdog_grace: float = 5.0):
        self.argv, self.slurm_step_name = slurm.name_step(argv)
        self.directory = Path(directory)
        self.env = env
        self.popen: subprocess.Popen | None = None
        self.watchdog_grace = watchdog_grace
        self.private_tmpdir: str | None = None  # the launch's TMPDIR; removed when the run ends
        self.killed_when_reaped = False  # reap() had to kill it: it kept running after its stdout closed
        self._watchdog: subprocess.Popen | None = None
        self._watchdog_pipe: int | None = None

    def start(self) -> None:
        parent = os.getpid()
        env = self.env
        if not slurm.spans_other_nodes(self.argv):
            self.private_tmpdir = make_private_tmpdir(env)
            if self.private_tmpdir is not None:
                env = {**(env if env is not None else os.environ), "TMPDIR": self.private_tmpdir}

        def launch() -> subprocess.Popen:
            return subprocess.Popen(
                self.argv,
                cwd=self.directory,
                env=env,
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
            self._remove_private_tmpdir()
            raise VaspStartError(f"could not launch {' '.join(self.argv)!r}: {error}") from error
        self._start_watchdog()

    def _start_watchdog(self) -> None:
        """The sidecar that clears VASP's session if this Python process disappears."""
        if not os.path.isdir("/proc"):
            return
        read_end, write_end = os.pipe()
        argv = [sys.executable, "-I", "-S", watchdog.__file__, "--fd", str(read_end),
                "--session", str(self.pid), "--grace", str(self.watchdog_grace)]
        if self.slurm_step_name:
            argv += ["--slurm-step", self.slurm_step_name]
        if self.private_tmpdir:
            argv += ["--tmpdir", self.private_tmpdir]
        try:
            self._watchdog = subprocess.Popen(
                argv, pass_fds=(read_end,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
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

    def _remove_private_tmpdir(self) -> None:
        if self.private_tmpdir is not None:
            watchdog.remove_private_tmpdir(self.private_tmpdir)
            self.private_tmpdir = None

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

    def launcher_executable(self) -> str | None:
        """The running launcher's executable (what a wrapper script ``exec``-ed), if it can be read."""
        if not self.alive:
            return None
        try:
            return psutil.Process(self.pid).exe() or None
        except psutil.Error:
            return None

    def write(self, text: str) -> None:
        assert self.popen is not None and self.popen.stdin is not None
        self.popen.stdin.write(text.encode())
        self.popen.stdin.flush()

    # -- the process tree -------------------------------------------------------------
    def session_processes(self) -> list[psutil.Process]:
        """Every live process of VASP's session: launcher, helpers and ranks (even orphaned)."""
        return [] if self.popen is None else tree.session_processes(self.pid)

    def rank_processes(self) -> list[psutil.Process]:
        """The local compute processes: those of the session that spawned nothing themselves."""
        return tree.leaf_processes(self.session_processes())

    def signal_session(self, signum: int) -> None:
        """Send ``signum`` to the whole session (the launcher's group and every rank's group)."""
        tree.signal_all(self.session_processes(), signum)

    def terminate(self, grace: float) -> int | None:
        """SIGTERM the session, then SIGKILL what is left (captured before anything died); reap."""
        if self.popen is None:
            return None
        captured = self.session_processes()
        tree.signal_all(captured, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        if self.alive:
            self.signal_session(signal.SIGTERM)
        others = [p for p in captured if p.pid != self.pid]
        deadline = time.monotonic() + grace
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace)
        _, alive = psutil.wait_procs(others, timeout=max(0.0, deadline - time.monotonic()))
        leftovers = alive + [p for p in self.session_processes() if p not in alive]
        if self.alive:
            leftovers.append(psutil.Process(self.pid))
        tree.signal_all(leftovers, signal.SIGKILL)
        self.reap(grace)
        psutil.wait_procs([p for p in leftovers if p.pid != self.pid], timeout=grace)
        if self.slurm_step_name is not None:
            slurm.cancel_step(self.slurm_step_name)  # the step's tasks are not in this session
        self._release_watchdog(grace)
        self._remove_private_tmpdir()
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
        if self.popen is None or self.popen.stdin is None:
            return
        with contextlib.suppress(OSError):
            self.popen.stdin.close()

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
