"""``mock-vasp``: a drop-in for ``vasp_std`` (run it where INCAR, POSCAR, KPOINTS, POTCAR are).

Extra entry points: ``mock-vasp --replay TRANSCRIPT`` plays a recorded VASP stdout, and
``mock-vasp potcars DIR`` writes a fake POTCAR library for ``VASP_PP_PATH``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

ERROR_BOX = """ -----------------------------------------------------------------------------
|                                                                             |
|     EEEEEEE  RRRRRR   RRRRRR   OOOOOOO  RRRRRR      ###     ###     ###     |
|     E        R     R  R     R  O     O  R     R     ###     ###     ###     |
|     E        R     R  R     R  O     O  R     R     ###     ###     ###     |
|     EEEEE    RRRRRR   RRRRRR   O     O  RRRRRR       #       #       #      |
|     E        R   R    R   R    O     O  R   R                               |
|     E        R    R   R    R   O     O  R    R      ###     ###     ###     |
|     EEEEEEE  R     R  R     R  OOOOOOO  R     R     ###     ###     ###     |
|                                                                             |
{body}|                                                                             |
|       ---->  I REFUSE TO CONTINUE WITH THIS SICK JOB ... BYE!!! <----       |
|                                                                             |
 -----------------------------------------------------------------------------
"""


def error_box(message: str) -> str:
    import textwrap

    lines = []
    for paragraph in message.splitlines() or [""]:
        lines.extend(textwrap.wrap(paragraph.strip(), 71) or [""])
    body = "".join(f"|     {line:<72s}|\n" for line in lines)
    return ERROR_BOX.format(body=body)


def _preamble(version, ranks: int) -> list[str]:
    running = [f" running on {ranks:4d} total cores",
               f" distrk:  each k-point on {ranks:4d} cores,    1 groups",
               f" distr:  one band on {1:4d} cores, {ranks:4d} groups"]
    if version is not None and version.number >= (6, 3, 0):
        return [version.header(), f" running {ranks:4d} mpi-ranks, with    1 threads/rank",
                *running[1:], " using from now: INCAR"]
    header = version.header() if version is not None else " vasp.6.4.2 20Jul23 (mock-vasp) complex"
    return [*running, " using from now: INCAR", header]


def run_vasp() -> int:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from .mpi import world

    comm = world()
    from .backend import make_backend
    from .config import load_settings
    from .engine import Run
    from .errors import MockVaspError
    from .job import load_job

    directory = Path.cwd()
    failure = None
    settings = job = backend = None
    if comm.is_root:
        version = None
        try:
            settings = load_settings(directory)
            version = settings.emulated_version
        except MockVaspError as error:
            failure = error
        sys.stdout.write("\n".join(_preamble(version, comm.size)) + "\n")
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["potcars"]:
        parser = argparse.ArgumentParser(prog="mock-vasp potcars",
                                         description="Write fake POTCARs for ASE (point VASP_PP_PATH here).")
        parser.add_argument("directory", type=Path)
        parser.add_argument("--functional", default="PBE", choices=["PBE", "LDA"])
        args = parser.parse_args(argv[1:])
        from .potcar import write_potcar_library

        write_potcar_library(args.directory, args.functional)
        print(f"fake POTCAR library written to {args.directory}; export VASP_PP_PATH={args.directory}")
        return 0
    parser = argparse.ArgumentParser(
        prog="mock-vasp",
        description="A fake VASP executable for testing drivers: run it where INCAR, POSCAR, KPOINTS and "
                    "POTCAR are. Settings through MOCK_VASP_* environment variables or mock_vasp.json "
                    "(see mock_vasp/README.md). 'mock-vasp potcars DIR' writes fake POTCARs.",
    )
    parser.add_argument("--replay", type=Path, metavar="TRANSCRIPT",
                        help="play a recorded VASP stdout, one ionic step per structure received")
    args = parser.parse_args(argv)
    if args.replay:
        from .replay import replay

        return replay(args.replay)
    return run_vasp()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code) if code else sys.exit(0)
