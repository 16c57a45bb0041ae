"""Environment defaults of the programs (CLI, demo, benchmarks, tests), written once.

Library code never changes the environment; entry points call :func:`apply_defaults` first.
A variable the user has set is kept.
"""

from __future__ import annotations

import os

OFFLINE = {"HF_HUB_OFFLINE": "1"}  # model hubs cannot be reached: fail fast instead of retrying
MPI_AS_ROOT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}  # containers run as root
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # measurements and parallel workers: no BLAS oversubscription


def apply_defaults(mpi_as_root: bool = False, one_thread: bool = False) -> None:
    """Set the offline default (and, when asked, Open MPI as root and one BLAS thread) unless already set."""
    chosen = {**OFFLINE, **(MPI_AS_ROOT if mpi_as_root else {}), **(ONE_THREAD if one_thread else {})}
    for name, value in chosen.items():
        os.environ.setdefault(name, value)
