"""Fast tests of process control without VASP: the watchdog's logic and program, the pause strategy
choice, the pauser's fallback and verification, and reading exit statuses. Children are ``sleep``s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import wait_for

from vasp_interactive import PauseSettings
from vasp_interactive.process import (
    Launcher,
    LocalProcessSignal,
    OpenMpiLauncherSignal,
    Pauser,
    PauseStrategy,
    SlurmStepSignal,
    VaspProcess,
    choose_strategy,
    identify_launcher,
    signal_death,
    strategy_for,
    watchdog,
)
from vasp_interactive.process.tree import is_stopped

# A session leader that ignores SIGTERM and has a child doing the same (only SIGKILL ends them).
STUBBORN = "trap '' TERM; sleep 60 & wait"


def member_names(leader: int) -> list[str]:
    names = []
    for pid in watchdog.session_members(leader):
        try:
            names.append(psutil.Process(pid).name())
        except psutil.Error:
            continue
    return names


def start_session(script: str) -> subprocess.Popen:
    """``sh -c script`` in a session of its own, once its one child runs ``sleep`` (not a forked ``sh``)."""
    child = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    assert wait_for(lambda: member_names(child.pid) == ["sh", "sleep"], 5.0)
    return child


def gone(pids) -> bool:
    return all(not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
               for pid in pids)


# ---------------------------------------------------------------------------- the watchdog
def test_session_members_lists_leader_then_every_member():
    child = start_session("sleep 60 & wait")
    try:
        members = watchdog.session_members(child.pid)
        assert members[0] == child.pid and len(members) == 2
        grandchild = psutil.Process(members[1])
        assert grandchild.ppid() == child.pid and grandchild.name() == "sleep"
        assert os.getpid() not in members
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert wait_for(lambda: watchdog.session_members(child.pid) == [], 5.0)  # nor zombies nor the dead


def test_session_members_follow_descendants_in_other_sessions():
    child = subprocess.Popen(["sh", "-c", "setsid sleep 60 & wait"], start_new_session=True)
    try:
        def escaped() -> list[int]:
            return [pid for pid in watchdog.session_members(child.pid) if os.getsid(pid) != child.pid]

        def escaped_names() -> list[str]:
            return [psutil.Process(pid).name() for pid in escaped()]

        assert wait_for(lambda: escaped_names() == ["sleep"], 5.0)  # found as a descendant, not by session
    finally:
        for pid in watchdog.session_members(child.pid):
            os.kill(pid, signal.SIGKILL)
        child.wait()


def test_clear_session_continues_stopped_members_and_kills_the_stubborn():
    child = start_session(STUBBORN)
    members = watchdog.session_members(child.pid)
    os.killpg(child.pid, signal.SIGSTOP)
    assert wait_for(lambda: all(is_stopped(psutil.Process(pid)) for pid in members), 5.0)
    started = time.monotonic()
    killed = watchdog.clear_session(child.pid, grace=0.5)
    child.wait(timeout=5)
    assert sorted(killed) == sorted(members)  # SIGTERM was ignored: both needed SIGKILL
    assert 0.5 <= time.monotonic() - started < 3.0
    assert wait_for(lambda: gone(members), 5.0)


def test_clear_session_of_a_polite_session_needs_no_kill():
    child = start_session("sleep 60 & wait")
    members = watchdog.session_members(child.pid)
    assert watchdog.clear_session(child.pid, grace=5.0) == []
    child.wait(timeout=5)
    assert wait_for(lambda: gone(members), 5.0)


def test_private_tmpdir_removal_refuses_other_directories(tmp_path):
    other = tmp_path / "precious"
    (other / "sub").mkdir(parents=True)
    assert not watchdog.remove_private_tmpdir(str(other)) and (other / "sub").is_dir()
    mine = tmp_path / f"{watchdog.PRIVATE_TMPDIR_PREFIX}abc"
    (mine / "ompi.123" / "1").mkdir(parents=True)
    assert watchdog.remove_private_tmpdir(str(mine)) and not mine.exists()


def test_newest_step_by_name():
    steps = [("7.0", "vasp-a"), ("7.10", "vasp-b"), ("7.2", "vasp-b"), ("7.3", "other")]
    assert watchdog.newest_step(steps, "vasp-b") == "7.10"  # by number, not as text
    assert watchdog.newest_step(steps, None) == "7.10"
    assert watchdog.newest_step(steps, "missing") is None
    assert watchdog.cancel_slurm_step("vasp-b", job=None) is None  # no allocation: nothing to ask


@pytest.mark.slow
def test_watchdog_program_clears_the_run_when_the_pipe_closes(tmp_path):
    """The module as the driver runs it (``python -I -S <file>``): isolated, standard library only."""
    child = start_session(STUBBORN)
    members = watchdog.session_members(child.pid)
    private = tmp_path / f"{watchdog.PRIVATE_TMPDIR_PREFIX}run"
    (private / "ompi.1").mkdir(parents=True)
    read_end, write_end = os.pipe()
    program = subprocess.Popen(
        [sys.executable, "-I", "-S", watchdog.__file__, "--fd", str(read_end), "--session", str(child.pid),
         "--grace", "0.5", "--tmpdir", str(private)],
        pass_fds=(read_end,), stderr=subprocess.PIPE, text=True)
    os.close(read_end)
    try:
        time.sleep(0.5)
        assert program.poll() is None and not gone(members)  # waits while the driver holds the pipe
        os.close(write_end)
        assert program.wait(timeout=10) == 0, program.stderr.read()
        child.wait(timeout=5)
        assert wait_for(lambda: gone(members), 5.0)
        assert not private.exists()
    finally:
        program.stderr.close()
        for pid in watchdog.session_members(child.pid):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- exit statuses
def test_signal_deaths_seen_directly_and_reported_by_launchers():
    assert signal_death(["vasp_std"], -signal.SIGSEGV).describe() == "SIGSEGV"
    reported = signal_death(["/opt/openmpi/bin/mpirun", "-np", "2", "vasp_std"], 139)
    assert reported.name == "SIGSEGV" and reported.describe() == "SIGSEGV, reported by mpirun as exit 139"
    assert signal_death(["srun", "vasp_std"], 137).describe() == "SIGKILL, reported by srun as exit 137"
    assert signal_death(["mpiexec", "vasp_std"], 134).name == "SIGABRT"
    assert signal_death(["vasp_std"], 139) is None  # VASP itself exiting 139 is an exit, not a signal
    assert signal_death(["mpirun", "vasp_std"], 1) is None
    assert signal_death(["mpirun", "vasp_std"], 128) is None  # 128 + 0 is no signal
    assert signal_death(["mpirun", "vasp_std"], 255) is None  # past the last signal number
    assert signal_death(["mpirun", "vasp_std"], None) is None


# ---------------------------------------------------------------------------- choosing a strategy
@pytest.fixture
def slurm_tools(tmp_path, monkeypatch) -> Path:
    """An ``scancel`` on PATH (never run here: the choice only looks for it)."""
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    (bin_dir / "scancel").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "scancel").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_launcher_of_argv_variants(tmp_path, slurm_tools, monkeypatch, mpirun):
    wrapper = tmp_path / "run_vasp.sh"
    wrapper.write_text(f"#!/bin/sh\nexec {mpirun} -np 2 vasp_std\n")
    wrapper.chmod(0o755)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("PATH", f"{Path(mpirun).parent}{os.pathsep}{os.environ['PATH']}")
    assert identify_launcher(["sleep", "1"]) is Launcher.OTHER
    assert identify_launcher([mpirun, "-np", "2", "vasp_std"]) is Launcher.OPEN_MPI
    assert identify_launcher(["mpirun", "-np", "2", "vasp_std"]) is Launcher.OPEN_MPI  # found on PATH
    assert identify_launcher(["srun", "-n", "2", "vasp_std"]) is Launcher.OTHER  # outside an allocation
    assert identify_launcher([str(wrapper)]) is Launcher.OTHER  # a wrapper is not run to find out
    assert identify_launcher([str(wrapper)], executable=mpirun) is Launcher.OPEN_MPI  # what it exec-ed
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert identify_launcher(["srun", "-n", "2", "vasp_std"]) is Launcher.SLURM_STEP
    assert identify_launcher(["/usr/bin/srun", "vasp_std"]) is Launcher.SLURM_STEP
    assert identify_launcher([mpirun, "-np", "2", "vasp_std"]) is Launcher.OPEN_MPI  # mpirun in a job


def test_launcher_named_like_mpirun_but_not_open_mpi(tmp_path):
    other = tmp_path / "mpirun"
    other.write_text("#!/bin/sh\necho 'HYDRA build details:'\n")
    other.chmod(0o755)
    assert identify_launcher([str(other), "-n", "2", "vasp_std"]) is Launcher.OTHER


@pytest.mark.parametrize("launcher, method, expected", [
    (Launcher.OTHER, "auto", LocalProcessSignal),
    (Launcher.OPEN_MPI, "auto", OpenMpiLauncherSignal),
    (Launcher.SLURM_STEP, "auto", SlurmStepSignal),
    (Launcher.OPEN_MPI, "psutil", LocalProcessSignal),
    (Launcher.SLURM_STEP, "psutil", LocalProcessSignal),
    (Launcher.OTHER, "openmpi", OpenMpiLauncherSignal),
    (Launcher.OTHER, "slurm", SlurmStepSignal),
    (Launcher.SLURM_STEP, "none", type(None)),
])
def test_strategy_for_launcher_and_method(launcher, method, expected):
    assert type(strategy_for(launcher, method)) is expected


# ---------------------------------------------------------------------------- the pauser
class DoesNothing(PauseStrategy):
    """A launcher that does not forward the pause signal."""

    name = "deaf"

    def pause(self, process: VaspProcess) -> None:
        pass

    def resume(self, process: VaspProcess) -> None:
        pass


class Fails(DoesNothing):
    """A strategy whose tool fails (``squeue`` down, the launcher gone)."""

    name = "broken"

    def __init__(self, ranks_known: bool = True) -> None:
        self.ranks_known = ranks_known

    def pause(self, process: VaspProcess) -> None:
        raise OSError("launcher unreachable")

    def resume(self, process: VaspProcess) -> None:
        raise OSError("launcher unreachable")

    def ranks(self, process: VaspProcess) -> list[psutil.Process]:
        return process.rank_processes() if self.ranks_known else []


@pytest.fixture
def sleeper(tmp_path):
    process = VaspProcess(["sleep", "60"], tmp_path)
    process.start()
    yield process
    stop(process)


def stop(process: VaspProcess) -> None:
    process.terminate(2.0)
    process.close_pipes()
    process.close_output_pipes()


def rank_stopped(process: VaspProcess) -> bool:
    (rank,) = process.rank_processes()
    return is_stopped(rank)


def test_choose_strategy_for_a_running_process(sleeper):
    assert type(choose_strategy(sleeper, PauseSettings())) is LocalProcessSignal
    assert choose_strategy(sleeper, PauseSettings(method="none")) is None
    assert type(choose_strategy(sleeper, PauseSettings(method="openmpi"))) is OpenMpiLauncherSignal


def test_pauser_pauses_verifies_and_resumes(sleeper):
    pauser = Pauser(sleeper, PauseSettings())
    report = pauser.pause()
    assert report.paused and report.verified and report.strategy == "psutil" and report.note == ""
    assert (report.ranks_stopped, report.ranks_seen) == (1, 1) and rank_stopped(sleeper)
    again = pauser.pause()
    assert again.paused and again.verified and again.note == "already paused"
    report = pauser.resume()
    assert not report.paused and report.verified and not rank_stopped(sleeper)
    assert pauser.resume().note == "not paused"


def test_pauser_falls_back_when_the_strategy_leaves_ranks_running(sleeper):
    pauser = Pauser(sleeper, PauseSettings(verify_timeout=0.2), strategy=DoesNothing())
    report = pauser.pause()
    assert report.paused and report.verified and report.strategy == "deaf+psutil"
    assert report.note == "deaf left 1 of 1 ranks running; used psutil" and rank_stopped(sleeper)
    assert pauser.resume().verified and not rank_stopped(sleeper)


def test_pauser_without_verification_reports_what_it_sees(sleeper):
    pauser = Pauser(sleeper, PauseSettings(verify=False), strategy=DoesNothing())
    report = pauser.pause()
    assert report.paused and not report.verified and report.strategy == "deaf"  # no fallback tried
    assert (report.ranks_stopped, report.ranks_seen) == (0, 1) and not rank_stopped(sleeper)


def test_pauser_falls_back_when_the_strategy_fails(sleeper):
    pauser = Pauser(sleeper, PauseSettings(), strategy=Fails())
    report = pauser.pause()
    assert report.paused and report.verified and report.strategy == "broken+psutil"
    assert report.note == "broken failed (launcher unreachable); used psutil" and rank_stopped(sleeper)
    report = pauser.resume()  # the strategy's resume fails too: the ranks are continued directly
    assert not report.paused and report.verified and not rank_stopped(sleeper)


def test_pauser_pauses_nothing_when_the_strategy_fails_and_no_rank_is_known(sleeper):
    pauser = Pauser(sleeper, PauseSettings(), strategy=Fails(ranks_known=False))
    report = pauser.pause()
    assert not report.paused and not report.verified and not pauser.paused
    assert "nothing paused" in report.note and not rank_stopped(sleeper)


def test_pauser_with_pausing_disabled(sleeper):
    report = Pauser(sleeper, PauseSettings(method="none")).pause()
    assert not report.paused and report.strategy == "none" and report.note == "pausing is disabled"
    assert not rank_stopped(sleeper)


# ---------------------------------------------------------------------------- a launch's TMPDIR
@pytest.mark.slow
def test_each_launch_has_a_private_tmpdir_removed_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    process = VaspProcess(["sh", "-c", 'echo "$TMPDIR"; sleep 60'], tmp_path)
    process.start()
    try:
        seen = process.popen.stdout.readline().decode().strip()
        assert seen == process.private_tmpdir and Path(seen).parent == tmp_path and Path(seen).is_dir()
    finally:
        stop(process)
    assert not Path(seen).exists() and process.private_tmpdir is None


def test_runs_that_may_reach_other_nodes_keep_the_callers_tmpdir(monkeypatch):
    from vasp_interactive.process.slurm import spans_other_nodes

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert spans_other_nodes(["srun", "vasp_std"]) and not spans_other_nodes(["mpirun", "vasp_std"])
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")
    assert not spans_other_nodes(["mpirun", "vasp_std"])
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "4")  # Open MPI starts its daemons there with srun
    assert spans_other_nodes(["mpirun", "vasp_std"])


def test_srun_keeps_the_callers_tmpdir(tmp_path, monkeypatch):
    """srun hands TMPDIR to every node of the step, where a directory made here does not exist."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/sh\necho "$TMPDIR"\n')
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    process = VaspProcess([str(fake / "srun")], tmp_path)
    process.start()
    try:
        assert process.popen.stdout.readline().decode().strip() == str(tmp_path)
        assert process.private_tmpdir is None
    finally:
        stop(process)
