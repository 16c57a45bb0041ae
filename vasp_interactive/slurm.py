"""Slurm job steps: naming this run's ``srun`` step, finding it, its local tasks, and cancelling it.

Under ``srun`` the VASP ranks are children of ``slurmstepd``, not of the launcher, so they are not in
the driver's process session. Several VASP runs may share one allocation (a campaign, an NEB with
one VASP per image), so "the newest step of the job" is not good enough: each ``srun`` gets a
unique ``--job-name`` (the step name) unless the user set one, and the step is looked up by name.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psutil

STEP_NAME_PREFIX = "vasp-interactive"
_counter = itertools.count(1)


def is_srun(argv: Sequence[str]) -> bool:
    return bool(argv) and Path(argv[0]).name == "srun"


def in_allocation() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID"))


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


def _run(argv: list[str]) -> str:
    """Run a Slurm client command; a failure says what Slurm printed."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RuntimeError(f"{' '.join(argv)}: {error}") from error
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[:300]}")
    return done.stdout


def list_steps(job: str) -> list[tuple[str, str]]:
    """``(step id, step name)`` of the job's running steps, from ``squeue``."""
    output = _run(["squeue", "--noheader", "--steps", "--jobs", job, "--format=%i %j"])
    steps = []
    for line in output.splitlines():
        fields = line.split(None, 1)
        if not fields or "." not in fields[0] or not fields[0].split(".", 1)[1].isdigit():
            continue
        steps.append((fields[0], fields[1].strip() if len(fields) > 1 else ""))
    return steps


def find_step(name: str | None, job: str | None = None) -> str:
    """The id (``JOB.STEP``) of the running step called ``name`` (the newest when several are)."""
    job = job or os.environ.get("SLURM_JOB_ID")
    if not job:
        raise RuntimeError("SLURM_JOB_ID is not set: pausing through Slurm needs a Slurm allocation")
    steps = list_steps(job)
    mine = [step for step, step_name in steps if name is None or step_name == name]
    if not mine:
        listed = ", ".join(f"{s} ({n})" for s, n in steps) or "none"
        raise RuntimeError(f"no running Slurm step named {name!r} in job {job}; squeue lists: {listed}")
    return max(mine, key=lambda step: int(step.split(".", 1)[1]))


def signal_step(step: str, signal_name: str) -> None:
    _run(["scancel", f"--signal={signal_name}", step])


def cancel_step(name: str) -> str | None:
    """``scancel`` this run's step if Slurm still lists it (its tasks outlived ``srun``)."""
    try:
        step = find_step(name)
    except RuntimeError:
        return None
    subprocess.run(["scancel", step], capture_output=True, text=True, timeout=30, check=False)
    return step


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
