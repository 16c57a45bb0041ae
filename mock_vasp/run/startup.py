"""Starting one run: settings, the preamble, the inputs and the backend, then the run loop.

Rank 0 reads everything and prints the version header before anything can fail (ASE finds the
version by running VASP in an empty directory); a failure is printed in VASP's ERROR box and
every rank exits with its code.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..config import load_settings
from ..errors import MockVaspError
from ..inputs.job import load_job
from ..mpi import world
from ..physics.registry import make_backend
from .engine import Run
from .messages import error_box, preamble


def run_vasp(directory: Path | None = None) -> int:
    """Run the fake VASP in ``directory`` (default: the working directory); returns the exit code."""
    comm = world()
    directory = Path.cwd() if directory is None else Path(directory)
    failure = None
    settings = job = backend = None
    if comm.is_root:
        version = None
        try:
            settings = load_settings(directory)
            version = settings.emulated_version
        except MockVaspError as error:
            failure = error
        sys.stdout.write("\n".join(preamble(version, comm.size)) + "\n")
        sys.stdout.flush()
        if failure is None:
            try:
                job = load_job(directory)
                job.ionic_mode  # noqa: B018  (validates IBRION)
                backend = make_backend(settings.backend, settings.backend_options)
                backend.check_elements(job.structure.symbols)
            except MockVaspError as error:
                failure = error
        if failure is not None:
            sys.stdout.write(error_box(str(failure)))
            sys.stdout.flush()
    status = comm.bcast(None if failure is None else getattr(failure, "exit_code", 1))
    if status is not None:
        comm.barrier()
        return int(status)
    settings, job = comm.bcast((settings, job))
    run = Run(comm, settings, job, backend)
    try:
        return run.execute()
    except MockVaspError as error:
        if comm.is_root:
            sys.stdout.flush()
            sys.stderr.write(str(error) + "\n")
            sys.stderr.flush()
        comm.abort(getattr(error, "exit_code", 1))
        return 1
