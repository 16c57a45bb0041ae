"""Kept for imports written before the move: Slurm steps are handled in :mod:`vasp_interactive.process.slurm`."""

from .process.slurm import (
    STEP_NAME_PREFIX,
    cancel_step,
    find_step,
    in_allocation,
    is_srun,
    list_steps,
    local_tasks,
    name_step,
    signal_step,
)

__all__ = ["STEP_NAME_PREFIX", "cancel_step", "find_step", "in_allocation", "is_srun", "list_steps",
           "local_tasks", "name_step", "signal_step"]
