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


def main(argv: list[str] | None = None) -> int:
    """Run ``mock-vasp`` with ``argv`` (default: the command line); returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["potcars"]:
        parser = argparse.ArgumentParser(prog="mock-vasp potcars",
                                         description="Write fake POTCARs for ASE (point VASP_PP_PATH here).")
        parser.add_argument("directory", type=Path)
        parser.add_argument("--functional", default="PBE", choices=["PBE", "LDA"])
        args = parser.parse_args(argv[1:])
        from .inputs.potcar import write_potcar_library

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
        from .run.replay import replay

        return replay(args.replay)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # VASP dies of SIGINT; set before the slow imports
    from .run.startup import run_vasp

    return run_vasp()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code) if code else sys.exit(0)
