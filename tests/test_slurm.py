"""Slurm paths the real cluster cannot reach: step naming (pure), and a failing ``squeue``.

Pausing, concurrent steps, a dead ``srun`` and a killed driver are tested against a real Slurm in
``test_slurm_real.py``; the stand-ins in ``tests/fake_slurm`` remain only to inject an ``squeue``
failure, which a healthy cluster never shows.
"""

from __future__ import annotations

import os
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


@pytest.mark.slow
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


def failing_tool(directory: Path, name: str, message: str) -> None:
    (directory / name).write_text(f"#!/bin/sh\necho '{message}' >&2\nexit 1\n")
    (directory / name).chmod(0o755)


def test_slurm_failures_are_typed_errors(tmp_path, allocation, monkeypatch):
    from vasp_interactive.errors import SlurmError, VaspError
    from vasp_interactive.process import slurm

    assert issubclass(SlurmError, VaspError)
    with pytest.raises(SlurmError, match=r"no running Slurm step named 'absent' in job 4242; squeue lists: none"):
        slurm.find_step("absent")  # the fake squeue answers, with no step
    assert slurm.cancel_step("absent") is None
    broken = tmp_path / "broken-bin"
    broken.mkdir()
    failing_tool(broken, "squeue", "squeue: error: Unable to contact slurm controller")
    failing_tool(broken, "scancel", "scancel: error: Invalid job id 4242.7")
    monkeypatch.setenv("PATH", f"{broken}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(SlurmError, match="exited 1: squeue: error: Unable to contact"):
        slurm.find_step("vasp-interactive-1")
    with pytest.raises(SlurmError, match="scancel --signal=STOP 4242.7 exited 1: scancel: error: Invalid job id"):
        slurm.signal_step("4242.7", "STOP")
    assert slurm.cancel_step("vasp-interactive-1") is None  # cleanup never raises
    monkeypatch.delenv("SLURM_JOB_ID")
    with pytest.raises(SlurmError, match="SLURM_JOB_ID is not set"):
        slurm.find_step("vasp-interactive-1")
