"""Pausing and stopping an ``srun`` step, against stand-ins for srun, squeue and scancel.

The stand-ins in ``tests/fake_slurm`` behave like Slurm where it matters here: the task is not in
srun's process session, it carries SLURM_JOB_ID/SLURM_STEP_ID, and steps are known by name.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from conftest import MOCK_VASP
from helpers import co_on_cu

from vasp_interactive import VaspInteractive
from vasp_interactive.slurm import name_step

PARAMS = dict(xc="PBE", kpts=(1, 1, 1), encut=300)
FAKE_SLURM = Path(__file__).parent / "fake_slurm"
JOB = "4242"


@pytest.fixture
def allocation(tmp_path, monkeypatch) -> Path:
    state = tmp_path / "slurm-state"
    state.mkdir()
    monkeypatch.setenv("FAKE_SLURM_STATE", str(state))
    monkeypatch.setenv("SLURM_JOB_ID", JOB)
    monkeypatch.setenv("PATH", f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}")
    return state


def task_of(calc, state: Path) -> psutil.Process:
    """The step's task: found through the fake's records, not through the driver's code."""
    srun_argv = psutil.Process(calc.session.process.pid).cmdline()
    name = next(a.split("=", 1)[1] for a in srun_argv if a.startswith("--job-name=")) \
        if any(a.startswith("--job-name=") for a in srun_argv) else srun_argv[srun_argv.index("-J") + 1]
    for path in state.glob(f"{JOB}.*"):
        step_name, pid = path.read_text().split()
        if step_name == name:
            return psutil.Process(int(pid))
    raise AssertionError(f"no step named {name} in {sorted(p.name for p in state.iterdir())}")


def wait_gone(process: psutil.Process, timeout: float = 10.0) -> bool:
    try:
        process.wait(timeout=timeout)
    except psutil.TimeoutExpired:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass
    return True


def test_step_names():
    os.environ.pop("SLURM_JOB_ID", None)
    assert name_step(["srun", "vasp_std"]) == (["srun", "vasp_std"], None)  # not in an allocation
    os.environ["SLURM_JOB_ID"] = JOB
    try:
        argv, name = name_step(["srun", "-n", "4", "vasp_std"])
        assert argv == ["srun", f"--job-name={name}", "-n", "4", "vasp_std"] and name.startswith("vasp-interactive-")
        assert name_step(["srun", "-n", "4", "vasp_std"])[1] != name  # unique per run
        assert name_step(["srun", "-J", "mine", "vasp_std"]) == (["srun", "-J", "mine", "vasp_std"], "mine")
        assert name_step(["srun", "--job-name=mine", "vasp_std"])[1] == "mine"
        assert name_step(["srun", "-Jmine", "vasp_std"])[1] == "mine"
        assert name_step(["mpirun", "-np", "2", "vasp_std"]) == (["mpirun", "-np", "2", "vasp_std"], None)
    finally:
        del os.environ["SLURM_JOB_ID"]


def test_pause_finds_this_runs_step_among_concurrent_steps(tmp_path, allocation):
    first, second = co_on_cu(), co_on_cu()
    a = VaspInteractive(command=["srun", "-n", "1", MOCK_VASP], directory=tmp_path / "a", **PARAMS)
    b = VaspInteractive(command=["srun", "-J", "user-named", "-n", "1", MOCK_VASP], directory=tmp_path / "b",
                        **PARAMS)
    first.calc, second.calc = a, b
    with a, b:
        energy_a = first.get_potential_energy()
        energy_b = second.get_potential_energy()
        assert energy_a == pytest.approx(energy_b, abs=1e-6)
        task_a, task_b = task_of(a, allocation), task_of(b, allocation)
        srun_a = psutil.Process(a.session.process.pid)
        assert task_a.pid not in {p.pid for p in a.session.process.session_processes()}  # as under Slurm

        report = a.pause()
        assert report.paused and report.verified and report.strategy == "slurm", report
        assert report.ranks_seen == 1 and report.ranks_stopped == 1
        assert task_a.status() == psutil.STATUS_STOPPED
        assert task_b.status() != psutil.STATUS_STOPPED  # the other run's step goes on
        assert srun_a.status() != psutil.STATUS_STOPPED  # srun keeps forwarding I/O
        with b.paused() as report_b:
            assert report_b.verified and task_b.status() == psutil.STATUS_STOPPED
        assert task_b.status() != psutil.STATUS_STOPPED

        first.positions[-1, 2] += 0.02  # a paused run is resumed before it gets work
        assert first.get_potential_energy() != energy_a
        assert task_a.status() != psutil.STATUS_STOPPED

        log = (allocation / "log").read_text().splitlines()
        step_a = next(line.split()[1] for line in log if line.startswith("srun") and str(task_a.pid) in line)
        step_b = next(line.split()[1] for line in log if line.startswith("srun") and str(task_b.pid) in line)
        assert f"scancel STOP {step_a}" in log and f"scancel CONT {step_a}" in log
        assert f"scancel STOP {step_b}" in log
    assert wait_gone(task_a) and wait_gone(task_b)
    assert "writing wavefunctions" in (tmp_path / "a" / "vasp.out").read_text()  # STOPCAR, not a kill


def test_orphaned_step_is_cancelled_when_srun_dies(tmp_path, allocation):
    atoms = co_on_cu()
    calc = VaspInteractive(command=["srun", MOCK_VASP], directory=tmp_path, **PARAMS)
    atoms.calc = calc
    atoms.get_potential_energy()
    task = task_of(calc, allocation)
    os.kill(calc.session.process.pid, signal.SIGKILL)  # srun gone; its task lives on outside the session
    time.sleep(0.2)
    assert task.is_running() and task.status() != psutil.STATUS_ZOMBIE
    calc.close()
    assert wait_gone(task)
    assert any(line.startswith("scancel cancel") for line in (allocation / "log").read_text().splitlines())


def test_pause_reports_failure_when_squeue_fails(tmp_path, allocation, monkeypatch):
    broken = tmp_path / "broken-bin"
    broken.mkdir()
    (broken / "squeue").write_text("#!/bin/sh\necho 'squeue: error: Unable to contact slurm controller' >&2\nexit 1\n")
    (broken / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{broken}{os.pathsep}{os.environ['PATH']}")
    atoms = co_on_cu()
    with VaspInteractive(command=["srun", MOCK_VASP], directory=tmp_path / "run", **PARAMS) as calc:
        atoms.calc = calc
        atoms.get_potential_energy()
        report = calc.pause()  # squeue failed, and stopping srun would not stop the task: no pause
        assert not report.paused and not report.verified and "squeue: error" in report.note, report
        assert "nothing paused" in report.note and not calc.session.paused
        assert task_of(calc, allocation).status() != psutil.STATUS_STOPPED
        assert psutil.Process(calc.session.process.pid).status() != psutil.STATUS_STOPPED
        atoms.positions[-1, 2] += 0.01
        atoms.get_potential_energy()


PAUSED_DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from helpers import co_on_cu
from vasp_interactive import VaspInteractive
atoms = co_on_cu()
calc = VaspInteractive(command=["srun", {mock!r}], directory={directory!r}, xc="PBE")
atoms.calc = calc
atoms.get_potential_energy()
print("ready", calc.pause().verified, flush=True)
sys.stdin.read()
"""


def test_sigkill_of_the_driver_cancels_the_paused_step(tmp_path, allocation):
    import subprocess
    import sys

    script = PAUSED_DRIVER.format(tests=str(Path(__file__).parent), mock=MOCK_VASP, directory=str(tmp_path))
    driver = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().split() == ["ready", "True"]
        record = next(allocation.glob(f"{JOB}.*"))
        task = psutil.Process(int(record.read_text().split()[1]))
        assert task.status() == psutil.STATUS_STOPPED
    finally:
        driver.kill()
        driver.wait()
    assert wait_gone(task)  # the watchdog sidecar killed srun and scancelled the step
    assert any(line.startswith("scancel cancel") for line in (allocation / "log").read_text().splitlines())
