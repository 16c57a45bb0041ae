"""Slurm job steps: naming this run's ``srun`` step, finding it, its local tasks, signalling and cancelling it.

Under ``srun`` the VASP ranks are children of ``slurmstepd``, not of the launcher, so they are not in
the driver's process session. Several VASP runs may share one allocation (a campaign, an NEB with
one VASP per image), so "the newest step of the job" is not good enough: each ``srun`` gets a
unique ``--job-name`` (the step name) unless the user set one, and the step is looked up by name.
The lookup and the cancel are the watchdog's (it must run without this package); failures of
Slurm's commands raise :class:`~vasp_interactive.errors.SlurmError`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psutil

from ..errors import SlurmError
from .watchdog import SLURM_TIMEOUT, cancel_slurm_step, list_slurm_steps, newest_step

STEP_NAME_PREFIX = "vasp-interactive"
_counter = itertools.count(1)


def is_srun(argv: Sequence[str]) -> bool:
    return bool(argv) and Path(argv[0]).name == "srun"


def in_allocation() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID"))


def spans_other_nodes(argv: Sequence[str]) -> bool:
    """Whether a run of ``argv`` may start processes on other nodes through Slurm (which copies the
    environment there): an ``srun``, or any launcher in an allocation of more than one node."""
    nodes = os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or "1"
    return is_srun(argv) or (in_allocation() and (not nodes.isdigit() or int(nodes) > 1))


def can_signal_steps(argv: Sequence[str]) -> bool:
    """Whether ``argv`` starts a step of the current allocation that ``scancel --signal`` can reach."""
    return is_srun(argv) and in_allocation() and shutil.which("scancel") is not None


def name_step(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """``argv`` with a unique ``--job-name`` for an ``srun`` inside an allocation, and the step name.

    A name the user gave (``-J NAME``, ``-JNAME``, ``--job-name NAME``, ``--job-name=NAME``) is kept.
    """
    argv = list(argv)
    if not (is_srun(argv) and in_allocation()):
        return argv, None
    for index, arg in enumerate(argv[1:], start=1):
        if arg in ("-J", "--job-name"):
            return argv, argv[index + 1] if index + 1 < len(argv) else None
        if arg.startswith("--job-name="):
            return argv, arg.split("=", 1)[1]
        if arg.startswith("-J") and len(arg) > 2:
            return argv, arg[2:]
    name = f"{STEP_NAME_PREFIX}-{os.getpid()}-{next(_counter)}"
    return [argv[0], f"--job-name={name}", *argv[1:]], name


def _failure(argv: Sequence[str], error: Exception) -> SlurmError:
    if isinstance(error, subprocess.CalledProcessError):
        said = (error.stderr or "").strip()[:300]
        return SlurmError(f"{' '.join(argv)} exited {error.returncode}: {said}")
    return SlurmError(f"{' '.join(argv)}: {error}")


def list_steps(job: str) -> list[tuple[str, str]]:
    """``(step id, step name)`` of the job's running steps, from ``squeue``."""
    try:
        return list_slurm_steps(job)
    except (OSError, subprocess.SubprocessError) as error:
        raise _failure(["squeue", "--steps", "--jobs", job], error) from error


def find_step(name: str | None, job: str | None = None) -> str:
    """The id (``JOB.STEP``) of the running step called ``name`` (the newest when several are)."""
    job = job or os.environ.get("SLURM_JOB_ID")
    if not job:
        raise SlurmError("SLURM_JOB_ID is not set: pausing through Slurm needs a Slurm allocation")
    steps = list_steps(job)
    step = newest_step(steps, name)
    if step is None:
        listed = ", ".join(f"{s} ({n})" for s, n in steps) or "none"
        raise SlurmError(f"no running Slurm step named {name!r} in job {job}; squeue lists: {listed}")
    return step


def signal_step(step: str, signal_name: str) -> None:
    """``scancel --signal=NAME JOB.STEP``: deliver a signal to every task of the step, on every node."""
    argv = ["scancel", f"--signal={signal_name}", step]
    try:
        subprocess.run(argv, capture_output=True, text=True, timeout=SLURM_TIMEOUT, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        raise _failure(argv, error) from error


def cancel_step(name: str) -> str | None:
    """``scancel`` this run's step if Slurm still lists it (its tasks outlived ``srun``)."""
    return cancel_slurm_step(name, os.environ.get("SLURM_JOB_ID"))


def local_tasks(step: str) -> list[psutil.Process]:
    """Every process of the step on this node, found by their ``SLURM_JOB_ID``/``SLURM_STEP_ID``."""
    job, step_id = step.split(".", 1)
    uid = os.getuid()
    found = []
    for process in psutil.process_iter(["uids"]):
        try:
            if process.info["uids"] is None or process.info["uids"].real != uid:
                continue
            env = process.environ()
        except (psutil.Error, OSError):
            continue
        if env.get("SLURM_JOB_ID") == job and env.get("SLURM_STEP_ID") == step_id:
            found.append(process)
    return found
