"""``vasp-interactive check``: try the configured VASP once on a new machine and report.

Runs a two-step interactive job on a tiny system (H2 in a box) in a temporary directory and
reports the VASP version, protocol variant, whether stdout, OUTCAR and vasprun.xml are complete
while VASP waits, whether pausing really stops the ranks, and whether a lattice can be streamed.
Exit status 0 when the calculator can drive this VASP, 1 when it cannot.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class CheckReport:
    command: list[str]
    ok: bool = False
    version: str | None = None
    variant: str | None = None
    stdout_complete: bool = False
    outcar_complete: bool | None = None
    vasprun_complete: bool | None = None
    pause: str = "not tried"
    lattice: str = "not tried"
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        yes = {True: "yes", False: "NO", None: "unknown"}
        return [
            f"command:              {' '.join(self.command)}",
            f"VASP version:         {self.version or 'not seen'}",
            f"protocol variant:     {self.variant or 'not seen'}",
            f"stdout complete:      {yes[self.stdout_complete]}",
            f"OUTCAR complete:      {yes[self.outcar_complete]}"
            + ("" if self.outcar_complete is not False else "  (block-buffered: stress cannot be streamed)"),
            f"vasprun.xml complete: {yes[self.vasprun_complete]}",
            f"pausing:              {self.pause}",
            f"lattice streaming:    {self.lattice}",
            f"time:                 {self.seconds:.1f} s",
            *(f"problem:              {p}" for p in self.problems),
            f"verdict:              {'compatible' if self.ok else 'NOT compatible'}",
        ]


def run_check(command: str | list[str] | None, directory: Path, timeout: float, xc: str = "PBE") -> CheckReport:
    from ase import Atoms

    from .calculator import VaspInteractive, find_command
    from .errors import VaspError
    from .settings import Timeouts

    started = time.monotonic()
    report = CheckReport(command=[] if command is None else (command if isinstance(command, list) else [command]))
    try:
        report.command = find_command(command)
    except VaspError as error:
        report.problems.append(error.summary)
        return report
    atoms = Atoms("H2", cell=np.eye(3) * 6.0, pbc=True, positions=[[0, 0, 0], [0.75, 0, 0]])
    timeouts = Timeouts(startup=timeout, step=timeout, silence=timeout, stop=min(timeout, 60.0))
    calc = VaspInteractive(command=report.command, directory=directory, txt="vasp.out", timeouts=timeouts,
                           xc=xc, encut=250, kpts=(1, 1, 1), isif=3, ismear=0, sigma=0.05)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # restarts are part of what is being checked
            _two_steps_and_a_cell(calc, atoms, report)
    except VaspError as error:
        report.problems.append(str(error).splitlines()[0])
        with contextlib.suppress(Exception):
            report.version = report.version or calc.session.version
    finally:
        calc.close()
        report.seconds = time.monotonic() - started
    return report


def _two_steps_and_a_cell(calc, atoms, report: CheckReport) -> None:
    """Two steps with a pause between them, then a cell change; what each shows goes into ``report``."""
    atoms.calc = calc
    atoms.get_potential_energy()
    report.version = calc.session.version
    with calc.paused() as pause:
        if pause.paused:
            verdict = "ranks stopped" if pause.verified else "NOT verified"
            report.pause = (f"{pause.strategy}: {verdict} ({pause.ranks_stopped}/{pause.ranks_seen} local "
                            f"processes, {pause.seconds * 1000:.0f} ms){' ' + pause.note if pause.note else ''}")
        else:
            report.pause = f"not possible: {pause.note}"
    atoms.positions[1, 0] += 0.02
    atoms.get_potential_energy()
    report.stdout_complete = len(calc.steps) == 2
    report.outcar_complete = calc.outcar.update() >= 2
    report.vasprun_complete = calc.vasprun.update() >= 2
    atoms.set_cell(np.eye(3) * 6.1, scale_atoms=True)
    restarts = calc.restarts
    atoms.get_potential_energy()
    report.variant = calc.session.variant.value
    report.lattice = "streamed" if calc.restarts == restarts else "not streamable (VASP restarts on cell changes)"
    report.ok = report.stdout_complete


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vasp-interactive",
        description="Tools of the interactive VASP calculator. 'check' tries the configured VASP once; 'ipi' "
                    "serves it to an i-PI server.")
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="run a two-step interactive job and report what works",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("--command", help="VASP command (default: ASE_VASP_COMMAND or VASP_COMMAND)")
    check.add_argument("--timeout", type=float, default=600.0, help="seconds for each step (default 600)")
    check.add_argument("--xc", default="PBE", help="functional for the POTCARs (default PBE)")
    check.add_argument("--keep", type=Path, help="run in this directory and keep it")
    ipi = sub.add_parser("ipi", help="serve VASP to an i-PI server (i-PI, ASE's SocketIOCalculator)",
                         description="Run VASP in this directory as an i-PI client: the structure from --structure "
                         "(default POSCAR), the VASP tags from --incar (default INCAR, when present). VASP stays "
                         "alive between requests, paused while it waits, and stops cleanly when the server ends.")
    where = ipi.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", metavar="NAME", help="UNIX socket name of the server (ASE/i-PI: /tmp/ipi_NAME)")
    where.add_argument("--port", type=int, help="TCP port of the server")
    ipi.add_argument("--host", default="localhost", help="server host for --port (default localhost)")
    ipi.add_argument("--directory", type=Path, default=Path("."), help="run directory (default: here)")
    ipi.add_argument("--structure", type=Path, help="structure file ASE reads (default: DIRECTORY/POSCAR)")
    ipi.add_argument("--incar", type=Path, help="INCAR with the VASP tags (default: DIRECTORY/INCAR if present)")
    ipi.add_argument("--kpts", type=int, nargs=3, default=(1, 1, 1), metavar=("A", "B", "C"),
                     help="Monkhorst-Pack mesh (default 1 1 1)")
    ipi.add_argument("--xc", default="PBE", help="functional for the POTCARs (default PBE)")
    ipi.add_argument("--command", help="VASP command (default: ASE_VASP_COMMAND or VASP_COMMAND)")
    ipi.add_argument("--no-stress", action="store_true", help="send a zero virial (no stress needed)")
    args = parser.parse_args(argv)
    if args.action == "ipi":
        return _run_ipi(args)
    directory = args.keep or Path(tempfile.mkdtemp(prefix="vasp-interactive-check-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        report = run_check(args.command, directory, args.timeout, args.xc)
    finally:
        if args.keep is None:
            shutil.rmtree(directory, ignore_errors=True)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _run_ipi(args) -> int:
    from ase.io import read

    from .calculator import VaspInteractive
    from .errors import VaspError
    from .ipi import incar_parameters, serve_ipi

    directory = args.directory
    structure = args.structure or directory / "POSCAR"
    incar = args.incar or (directory / "INCAR" if (directory / "INCAR").is_file() else None)
    try:
        if not structure.is_file():
            raise FileNotFoundError(f"no structure file {structure}: give --structure (any file ASE reads)")
        atoms = read(structure)
        parameters = {"xc": args.xc, "kpts": tuple(args.kpts)}
        if incar is not None:
            parameters.update(incar_parameters(incar))
        calc = VaspInteractive(command=args.command, directory=directory, **parameters)
        report = serve_ipi(atoms, calc, unixsocket=args.unix, host=args.host, port=args.port,
                           use_stress=False if args.no_stress else None)
    except (VaspError, OSError) as error:
        print(f"vasp-interactive ipi: {error}", file=sys.stderr)
        return 1
    print(f"served {report.requests} structures ({report.paused} waits with VASP paused, "
          f"{report.restarts} restarts); VASP stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
