"""Process management under real MPI, and every failure ending in a typed error with nothing left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import MOCK_VASP, mock_processes
from helpers import co_on_cu, wait_for

from vasp_interactive import (
    SilenceTimeout,
    StartupTimeout,
    StepTimeout,
    Timeouts,
    VaspInteractive,
    VaspProtocolError,
)
from vasp_interactive.errors import EigensolverError, VaspKilled, ZbrentError

PARAMS = dict(xc="PBE", kpts=(1, 1, 1), encut=300)
TESTS = Path(__file__).parent


def session_pids(calc) -> list[int]:
    return [p.pid for p in calc.session.process.session_processes()]


def assert_nothing_left(pids, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes still alive: {alive}")


def cpu_seconds(processes) -> list[float]:
    return [sum(p.cpu_times()[:2]) for p in processes]


@pytest.mark.slow
def test_pause_resume_under_mpirun(tmp_path, mpirun):
    atoms = co_on_cu()
    calc = VaspInteractive(command=[mpirun, "-np", "2", MOCK_VASP], directory=tmp_path, **PARAMS)
    atoms.calc = calc
    atoms.get_potential_energy()
    ranks = calc.session.process.rank_processes()
    assert len(ranks) == 2 and all("mock-vasp" in " ".join(r.cmdline()) for r in ranks)
    with calc.paused() as report:
        assert report.paused and report.verified and report.strategy.startswith("openmpi")
        assert report.ranks_stopped == 2 and report.seconds < 1.0
        assert all(r.status() == psutil.STATUS_STOPPED for r in ranks)
        before = cpu_seconds(ranks)
        time.sleep(0.5)
        assert cpu_seconds(ranks) == before  # stopped ranks use no CPU
    assert all(r.status() != psutil.STATUS_STOPPED for r in ranks)
    before = cpu_seconds(ranks)
    time.sleep(0.5)
    assert max(b - a for a, b in zip(before, cpu_seconds(ranks))) > 0.05  # rank 1 spins in MPI again
    atoms.positions[-1, 2] += 0.01
    atoms.get_potential_energy()
    report = calc.pause()
    assert report.paused
    pids = session_pids(calc)
    calc.close()  # closing while paused resumes, then stops cleanly
    assert_nothing_left(pids)
    assert "writing wavefunctions" in (tmp_path / "vasp.out").read_text()


@pytest.mark.slow
def test_psutil_strategy_pauses_serial_vasp(tmp_path):
    from vasp_interactive import PauseSettings

    atoms = co_on_cu()
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path, pause=PauseSettings(method="psutil"),
                         **PARAMS) as calc:
        atoms.calc = calc
        atoms.get_potential_energy()
        with calc.paused() as report:
            assert report.strategy == "psutil" and report.verified and report.ranks_seen == 1
        atoms.positions[-1, 2] += 0.01
        atoms.get_potential_energy()
        assert calc.pause().paused
        atoms.positions[-1, 2] += 0.01
        atoms.get_potential_energy()  # a paused VASP is resumed before it is given work
        assert not calc.session.paused


@pytest.mark.slow
def test_pauses_nest_and_pause_is_a_context_manager(tmp_path):
    """D1: an inner pause block must not resume VASP inside the outer one; ``with calc.pause():`` works."""
    atoms = co_on_cu()
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path, **PARAMS) as calc:
        atoms.calc = calc
        atoms.get_potential_energy()
        ranks = calc.session.process.rank_processes()

        def stopped():
            return all(r.status() == psutil.STATUS_STOPPED for r in ranks)

        with calc.paused() as outer:
            assert outer.paused and stopped()
            with calc.paused() as inner:
                assert inner.paused
            assert calc.session.paused and stopped()  # still paused after the inner block
        assert not calc.session.paused and not stopped()
        with calc.pause() as report:  # the public driver's spelling
            assert report.paused and stopped()
        assert not calc.session.paused
        calc.pause()
        atoms.positions[-1, 2] += 0.01
        atoms.get_potential_energy()  # work resumes VASP, and ends the pause taken before
        with calc.pause():
            assert stopped()
        assert not calc.session.paused


@pytest.mark.slow
def test_bad_input_is_a_typed_error_before_anything_runs(tmp_path, monkeypatch):
    """D4/D5: non-finite coordinates, no atoms, unknown elements, missing POTCARs, unwritable directories."""
    from ase import Atoms

    from vasp_interactive import VaspSetupError

    def attempt(atoms, directory, match):
        with VaspInteractive(command=MOCK_VASP, directory=directory, **PARAMS) as calc:
            atoms.calc = calc
            with pytest.raises(VaspSetupError, match=match):
                atoms.get_potential_energy()
            assert calc.session is None or not calc.session.process.alive

    broken = co_on_cu()
    broken.positions[3, 1] = np.nan
    attempt(broken, tmp_path / "nan", "non-finite positions")
    assert not (tmp_path / "nan" / "POSCAR").exists()  # refused before any input was written
    attempt(Atoms(cell=np.eye(3) * 5, pbc=True), tmp_path / "empty", "no atoms")
    attempt(Atoms("X", cell=np.eye(3) * 5, pbc=True), tmp_path / "unknown", "cannot set up VASP's inputs")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    attempt(co_on_cu(), blocker / "run", "cannot create the run directory")
    monkeypatch.setenv("VASP_PP_PATH", str(tmp_path / "no-potcars"))
    attempt(co_on_cu(), tmp_path / "nopotcar", "VASP_PP_PATH")
    monkeypatch.undo()
    # mid-run: a diverged optimizer's NaN is refused before it is sent, and VASP stays usable
    atoms = co_on_cu()
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path / "running", **PARAMS) as calc:
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        atoms.positions[-1, 0] = np.inf
        with pytest.raises(VaspSetupError, match="non-finite"):
            atoms.get_potential_energy()
        atoms.positions[-1] = co_on_cu().positions[-1]
        assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-6) and calc.restarts == 0


@pytest.mark.slow
def test_restarts_leave_no_unclosed_pipe(tmp_path):
    """D6: every restart closed only stdin; the old stdout/stderr pipes were left to the garbage collector."""
    script = textwrap.dedent(f"""
        import gc, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from helpers import co_on_cu
        from vasp_interactive import VaspInteractive
        atoms = co_on_cu()
        with VaspInteractive(command={MOCK_VASP!r}, directory={str(tmp_path)!r}, xc="PBE", kpts=(1, 1, 1),
                             encut=300) as calc:
            atoms.calc = calc
            for _ in range(3):
                atoms.get_potential_energy()
                atoms.pop()  # new atoms: VASP restarts
            print("restarts", calc.restarts)
        gc.collect()
    """)
    done = subprocess.run([sys.executable, "-X", "dev", "-W", "always::ResourceWarning", "-c", script],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "restarts 2" in done.stdout
    assert "ResourceWarning" not in done.stderr, done.stderr


@pytest.mark.slow
def test_a_wrapper_that_redirects_stdout_is_named_as_the_cause(tmp_path):
    """D3: VASP's stdout redirected inside a wrapper: say so, instead of 'killed by SIGKILL'."""
    from vasp_interactive import Timeouts, VaspExited

    wrapper = tmp_path / "run_vasp.sh"
    wrapper.write_text(f"#!/bin/sh\nexec {MOCK_VASP} > out.txt\n")
    wrapper.chmod(0o755)
    atoms = co_on_cu()
    with VaspInteractive(command=str(wrapper), directory=tmp_path, timeouts=Timeouts(terminate=1.0),
                         **PARAMS) as calc:
        atoms.calc = calc
        with pytest.raises(VaspExited, match="stdout closed .* redirect in the command or in a wrapper"):
            atoms.get_potential_energy()
    assert not [p for p in mock_processes() if p.cwd() == str(tmp_path)]


DRIVER = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if CI ignores SIGINT
    sys.path.insert(0, {tests!r})
    from helpers import co_on_cu
    from ase.optimize import BFGS
    from ase.io.trajectory import Trajectory
    from vasp_interactive import VaspInteractive
    atoms = co_on_cu()
    with VaspInteractive(command={command!r}, directory={directory!r}, xc="PBE") as calc:
        atoms.calc = calc
        atoms.get_potential_energy()
        print("ready", calc.session.process.pid, flush=True)
        opt = BFGS(atoms, logfile=None, trajectory={trajectory!r})
        opt.run(fmax=0.001, steps=100)
""")


def driver_env(tmp_path) -> dict[str, str]:
    """The driver's environment, with a TMPDIR of the test's own (Open MPI puts its session directory there)."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    return {**os.environ, "TMPDIR": str(tmpdir)}


def assert_tmpdir_emptied(tmp_path, timeout=5.0):
    """D7: nothing of the run may stay in TMPDIR (Open MPI's ``ompi.<pid>`` session directory was left)."""
    tmpdir = tmp_path / "tmpdir"
    assert wait_for(lambda: not any(tmpdir.iterdir()), timeout), sorted(p.name for p in tmpdir.iterdir())


def start_driver(tmp_path, command, settings=None):
    if settings:
        import json

        (tmp_path / "mock_vasp.json").write_text(json.dumps(settings))
    script = DRIVER.format(tests=str(TESTS), command=command, directory=str(tmp_path),
                           trajectory=str(tmp_path / "opt.traj"))
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env=driver_env(tmp_path))
    line = driver.stdout.readline()
    assert line.startswith("ready"), line
    pid = int(line.split()[1])
    tree = [pid] + [p.pid for p in psutil.Process(pid).children(recursive=True)]
    return driver, tree


@pytest.mark.slow
@pytest.mark.parametrize("use_mpi", [False, True])
def test_sigkill_of_the_driver_leaves_nothing(tmp_path, use_mpi, request):
    command = [MOCK_VASP]
    if use_mpi:
        command = [request.getfixturevalue("mpirun"), "-np", "2", MOCK_VASP]
    driver, tree = start_driver(tmp_path, command, {"faults": {"slow_step_seconds": 0.2}})
    time.sleep(0.3)
    driver.kill()
    driver.wait()
    assert_nothing_left(tree, timeout=5.0)
    assert_tmpdir_emptied(tmp_path)


PAUSED_DRIVER = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if CI ignores SIGINT
    sys.path.insert(0, {tests!r})
    from helpers import co_on_cu
    from vasp_interactive import VaspInteractive
    atoms = co_on_cu()
    calc = VaspInteractive(command={command!r}, directory={directory!r}, xc="PBE")
    atoms.calc = calc
    atoms.get_potential_energy()
    report = calc.pause()
    print("ready", calc.session.process.pid, report.paused, flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
@pytest.mark.parametrize("use_mpi", [False, True])
def test_sigkill_of_the_driver_while_vasp_is_paused(tmp_path, use_mpi, request):
    """A stopped process ignores SIGTERM: the watchdog sidecar resumes and ends it."""
    command = [MOCK_VASP]
    if use_mpi:
        command = [request.getfixturevalue("mpirun"), "-np", "2", MOCK_VASP]
    script = PAUSED_DRIVER.format(tests=str(TESTS), command=command, directory=str(tmp_path))
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env=driver_env(tmp_path))
    words = driver.stdout.readline().split()
    assert words[0] == "ready" and words[2] == "True", words
    pid = int(words[1])
    tree = [pid] + [p.pid for p in psutil.Process(pid).children(recursive=True)]
    assert any(psutil.Process(p).status() == psutil.STATUS_STOPPED for p in tree)
    driver.kill()
    driver.wait()
    assert_nothing_left(tree, timeout=10.0)
    assert_tmpdir_emptied(tmp_path, timeout=10.0)


@pytest.mark.slow
def test_sigint_during_a_step_keeps_finished_steps(tmp_path):
    driver, tree = start_driver(tmp_path, [MOCK_VASP], {"faults": {"slow_step_seconds": 0.8}})
    time.sleep(2.5)
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=30) != 0
    assert_nothing_left(tree)
    from ase.io import read

    frames = read(tmp_path / "opt.traj", ":")
    assert len(frames) >= 1 and all(f.get_forces().shape == (14, 3) for f in frames)


def failing_calc(tmp_path, faults, command=MOCK_VASP, **timeouts):
    import json

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "mock_vasp.json").write_text(json.dumps({"faults": faults}))
    return VaspInteractive(command=command, directory=tmp_path, timeouts=Timeouts(**timeouts), **PARAMS)


def drive(calc, steps=4):
    atoms = co_on_cu()
    atoms.calc = calc
    for _ in range(steps):
        atoms.get_potential_energy()
        atoms.positions[-1, 2] += 0.003


@pytest.mark.slow
@pytest.mark.parametrize("error, errtype", [("zbrent", ZbrentError), ("edddav", EigensolverError)])
def test_crash_mid_run_is_typed(tmp_path, error, errtype):
    calc = failing_calc(tmp_path, {"crash_at_step": 3, "crash_error": error})
    with pytest.raises(errtype) as caught:
        drive(calc)
    text = str(caught.value)
    assert "exit code: 1" in text and "VASP said:" in text and "last lines of stdout" in text
    assert caught.value.exit_code == 1
    assert not calc.session.process.alive
    calc.close()


@pytest.mark.slow
def test_hang_gives_silence_timeout(tmp_path):
    calc = failing_calc(tmp_path, {"hang_at_step": 2}, silence=2.0)
    started = time.monotonic()
    with pytest.raises(SilenceTimeout, match="printed nothing"):
        drive(calc)
    assert time.monotonic() - started < 15
    assert not calc.session.process.alive
    calc.close()


@pytest.mark.slow
def test_step_and_startup_timeouts(tmp_path):
    calc = failing_calc(tmp_path / "step", {"slow_step_seconds": 4.0}, step=2.0, startup=60)
    calc.settings = calc.settings  # startup passes (one slow step fits in 60 s)
    with pytest.raises((StartupTimeout, StepTimeout)):
        drive(calc, steps=2)
    calc.close()
    calc = failing_calc(tmp_path / "start", {"slow_step_seconds": 4.0}, startup=1.5)
    with pytest.raises(StartupTimeout, match="no first result"):
        drive(calc, steps=1)
    assert not calc.session.process.alive
    calc.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["noise", "overflow"])
def test_garbage_is_a_protocol_error(tmp_path, kind):
    calc = failing_calc(tmp_path, {"garbage_at_step": 2, "garbage": kind})
    with pytest.raises(VaspProtocolError, match="FORCES block"):
        drive(calc)
    assert not calc.session.process.alive
    calc.close()


@pytest.mark.slow
def test_harmless_chatter_is_ignored(tmp_path):
    """An unknown line on stdout before step 2's SCF changes nothing: same energies, no restart."""
    from ase.calculators.emt import EMT

    calc = failing_calc(tmp_path, {"garbage_at_step": 2, "garbage": "chatter"})
    atoms = co_on_cu()
    atoms.calc = calc
    energies, expected = [], []
    for _ in range(4):
        energies.append(atoms.get_potential_energy(force_consistent=True))
        reference = atoms.copy()
        reference.calc = EMT()
        expected.append(reference.get_potential_energy())
        atoms.positions[-1, 2] += 0.003
    assert "chatter: node17 says hello" in (tmp_path / "vasp.out").read_text()
    assert calc.restarts == 0 and len(calc.steps) == 4 and calc.session.usable
    assert energies == pytest.approx(expected, abs=1e-4)
    calc.close()


@pytest.mark.slow
def test_stderr_flood_does_not_block_and_reaches_the_error(tmp_path):
    calc = failing_calc(tmp_path / "ok", {"stderr_flood_bytes": 3_000_000, "stderr_flood_at_step": 2})
    drive(calc)
    assert calc.session.stream.stderr.total >= 3_000_000
    calc.close()
    calc = failing_calc(tmp_path / "crash", {"stderr_flood_bytes": 1_000_000, "stderr_flood_at_step": 2,
                                             "crash_at_step": 2})
    with pytest.raises(ZbrentError) as caught:
        drive(calc)
    assert "forrtl: warning" in caught.value.stderr_tail
    calc.close()


@pytest.mark.slow
def test_killed_vasp_is_reported(tmp_path):
    calc = failing_calc(tmp_path, {"signal_at_step": 2, "signal": "SIGSEGV"})
    with pytest.raises(VaspKilled, match="SIGSEGV"):
        drive(calc)
    calc.close()


@pytest.mark.slow
def test_rank_killed_under_mpirun_is_reported_as_a_signal(tmp_path, mpirun):
    """D2: mpirun turns a rank's SIGSEGV into its own exit 139; that is still a death by SIGSEGV."""
    calc = failing_calc(tmp_path, {"signal_at_step": 3, "signal": "SIGSEGV"}, [mpirun, "-np", "2", MOCK_VASP])
    with pytest.raises(VaspKilled, match="killed by SIGSEGV, reported by mpirun as exit 139") as caught:
        drive(calc)
    assert caught.value.exit_code == 139 and len(calc.session.records) == 2
    assert not calc.session.process.alive
    calc.close()


@pytest.mark.slow
@pytest.mark.parametrize("use_mpi", [False, True])
def test_no_fake_vasp_left_after_close(tmp_path, use_mpi, request):
    """Runs of its own (stopped at a prompt, while paused, after a crash); then none of their processes."""
    command = [request.getfixturevalue("mpirun"), "-np", "2", MOCK_VASP] if use_mpi else [MOCK_VASP]
    pids = []
    for name, pause in (("prompt", False), ("paused", True)):
        atoms = co_on_cu()
        calc = VaspInteractive(command=command, directory=tmp_path / name, **PARAMS)
        atoms.calc = calc
        atoms.get_potential_energy()
        pids += session_pids(calc)
        assert any(pid in pids for pid in (p.pid for p in mock_processes()))  # the check sees live runs
        if pause:
            assert calc.pause().paused
        calc.close()
    calc = failing_calc(tmp_path / "crash", {"crash_at_step": 2}, command)
    with pytest.raises(ZbrentError):
        drive(calc)
    pids += session_pids(calc) + [calc.session.process.pid]
    calc.close()
    assert_nothing_left(pids)
    assert not [p for p in mock_processes() if p.cwd().startswith(str(tmp_path))]


@pytest.mark.slow
def test_ml_force_field_run_is_stopped_with_sigint(tmp_path):
    """VASP's ML force field ignores STOPCAR (the fake too): close() must use SIGINT, and does."""
    atoms = co_on_cu()
    calc = VaspInteractive(command=MOCK_VASP, directory=tmp_path / "sigint", ml_lmlff=True, **PARAMS)
    atoms.calc = calc
    atoms.get_potential_energy()
    assert "ML_LMLFF = .TRUE." in (tmp_path / "sigint" / "INCAR").read_text()
    atoms.positions[-1, 2] += 0.01
    atoms.get_potential_energy()
    pids, session = session_pids(calc), calc.session
    calc.close()
    assert session.process.returncode == -signal.SIGINT
    assert_nothing_left(pids)
    assert not (tmp_path / "sigint" / "STOPCAR").exists()

    # The same run stopped the STOPCAR way: the fake carries on, and only the escalation ends it.
    calc = VaspInteractive(command=MOCK_VASP, directory=tmp_path / "stopcar", ml_lmlff=True,
                           timeouts=Timeouts(stop=1.0), **PARAMS)
    atoms.calc = calc
    atoms.get_potential_energy()
    calc.session.stop_with_signal = False
    pids, session = session_pids(calc), calc.session
    calc.close()
    assert session.process.returncode == -signal.SIGTERM
    assert_nothing_left(pids)
    assert "hard stop" not in (tmp_path / "stopcar" / "vasp.out").read_text()
    assert not (tmp_path / "stopcar" / "STOPCAR").exists()  # it would stop the next run at once


@pytest.mark.slow
def test_stale_stopcar_is_removed_before_start(tmp_path):
    (tmp_path / "STOPCAR").write_text("LABORT = .TRUE.\n")
    atoms = co_on_cu()
    with pytest.warns(UserWarning, match="stale"), VaspInteractive(command=MOCK_VASP, directory=tmp_path,
                                                                   **PARAMS) as calc:
        atoms.calc = calc
        atoms.get_potential_energy()
        atoms.positions[-1, 2] += 0.01
        atoms.get_potential_energy()
        assert calc.session.usable and not calc.session.hard_stop_seen


@pytest.mark.slow
def test_vasp_gets_default_sigint_even_if_the_driver_ignores_it(tmp_path):
    """A driver started in the background ('python run.py &') ignores SIGINT; VASP must not."""
    wrapper = tmp_path / "vasp-wrapper"
    wrapper.write_text(f"#!/bin/sh\ngrep SigIgn /proc/$$/status > sigign.txt\nexec {MOCK_VASP}\n")
    wrapper.chmod(0o755)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with VaspInteractive(command=str(wrapper), directory=tmp_path / "run", **PARAMS) as calc:
            atoms = co_on_cu()
            atoms.calc = calc
            atoms.get_potential_energy()
    finally:
        signal.signal(signal.SIGINT, previous)
    ignored = int((tmp_path / "run" / "sigign.txt").read_text().split()[1], 16)
    assert not ignored & (1 << (signal.SIGINT - 1))
