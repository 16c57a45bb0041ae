"""``finetuna``: relax structures with the online learner (or a baseline) from the command line.

    finetuna demo                               the main job on embedded defaults
    finetuna relax STRUCTURE [options]          one relaxation, live progress, summary table
    finetuna campaign DIR_OR_GLOB ... [options] many relaxations as Dask tasks, resumable
    finetuna report RUN_DIR                     PNG figures of a relaxation or a campaign

Errors are one line with a hint; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import get_args

from .campaign import Query
from .environment import apply_defaults


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--parent", default="mock",
                        help="mock (the fake VASP, default), vasp (ASE_VASP_COMMAND), emt, or ase:package.module.Class")
    parser.add_argument("--model", default="sevennet", help="sevennet (default) or fairchem:/path/to/checkpoint.pt")
    parser.add_argument("--query", default="default",
                        choices=get_args(Query),
                        help="when to ask the parent (default: adaptive trust region, stall guard, uphill "
                             "rejection and a tight finish; start-match: the same without its checked local "
                             "GP, the default until 2026-12-06; segments: trust-region segments on a "
                             "GP-corrected model, fewer calls, less accurate on floppy systems; the others "
                             "are the paper's, as published)")
    parser.add_argument("--method", default="learner", choices=["learner", "bfgs", "gpmin", "fire"],
                        help="the online learner (default) or a parent-only optimizer")
    parser.add_argument("--fmax", type=float, default=0.03, help="force criterion on free atoms, eV/A (0.03)")
    parser.add_argument("--steps", type=int, default=1000, help="maximum optimizer steps (1000)")
    parser.add_argument("--max-parent-calls", type=int, default=None, help="stop after this many parent calls")
    parser.add_argument("--vasp", default="{}", metavar="JSON",
                        help='VASP parameters, e.g. \'{"encut": 400, "kpts": [4, 4, 1]}\'')
    parser.add_argument("--command", help="VASP command for --parent vasp (default: ASE_VASP_COMMAND)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _settings(args):
    from .campaign import RelaxSettings

    try:
        vasp = json.loads(args.vasp)
    except json.JSONDecodeError as error:
        raise UsageError(f"--vasp is not valid JSON ({error})", 'e.g. --vasp \'{"encut": 400}\'') from None
    parent_settings = {"command": args.command} if args.command else {}
    return RelaxSettings(method=args.method, parent=args.parent, model=args.model, query=args.query, fmax=args.fmax,
                         steps=args.steps, max_parent_calls=args.max_parent_calls, vasp_parameters=vasp,
                         parent_settings=parent_settings)


class UsageError(Exception):
    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


def _read_structure(path: str):
    from ase.io import read

    if not Path(path).is_file():
        raise UsageError(f"no such structure file: {path}", "give a file ASE can read (POSCAR, .traj, .extxyz, .cif)")
    try:
        atoms = read(path)
    except Exception as error:  # noqa: BLE001 - any reader error is a user error here
        raise UsageError(f"cannot read {path}: {error}", "check the format, or name it with its usual extension") \
            from None
    if len(atoms) == 0:
        raise UsageError(f"{path} contains no atoms")
    if atoms.cell.rank < 3:
        raise UsageError(f"{path} has no 3D cell", "VASP needs a periodic cell; add vacuum with ase's center()")
    atoms.pbc = True
    return atoms


def cmd_relax(args) -> int:
    from .campaign import relax_structure

    settings = _settings(args)
    atoms = _read_structure(args.structure)
    out = Path(args.out or Path(args.structure).stem + "-relax")
    print(f"relaxing {args.structure} ({atoms.get_chemical_formula()}, {len(atoms)} atoms) with {settings.method}"
          f"{'/' + settings.query if settings.method == 'learner' else ''}, parent {settings.parent}; files in {out}")
    started = time.perf_counter()

    def progress(learner) -> None:
        record = learner.records[-1]
        line = (f"\r  step {record.step:4d}  parent calls {learner.parent_call_count:3d}  fmax {record.fmax:8.4f}  "
                f"E {record.energy:14.6f} eV  {record.source:9s} {time.perf_counter() - started:7.1f} s")
        sys.stdout.write(line)
        sys.stdout.flush()
        if record.source != "surrogate":
            sys.stdout.write(f"  <- {record.reason}\n")

    row = relax_structure(atoms, out, settings, on_step=progress)
    print("\n")
    for key in ("status", "method", "parent_calls", "scf_iterations", "final_energy", "fmax", "wall_seconds"):
        value = row[key]
        print(f"  {key:15s} {value:.6f}" if isinstance(value, float) else f"  {key:15s} {value}")
    print(f"\n  files: {out}/relax.traj (trajectory), parent.extxyz (parent points), steps.jsonl (log), "
          f"result.json, final.extxyz")
    return 0 if row["status"] == "converged" else 2


def cmd_campaign(args) -> int:
    from .campaign import collect_structures, run_campaign

    settings = _settings(args)
    structures = collect_structures(args.inputs)
    if not structures:
        raise UsageError(f"no structure files found in {' '.join(args.inputs)}", "give directories, globs or files")
    out = Path(args.out)
    print(f"campaign of {len(structures)} structures in {out} ({settings.method}, parent {settings.parent})")
    try:
        from tqdm import tqdm

        bar = tqdm(total=len(structures), unit="structure")
    except ImportError:
        bar = None

    def done(row) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{row['structure']}: {row['status']}")

    cluster = args.scheduler
    rows = run_campaign(structures, out, settings, cluster=cluster, workers=args.workers, on_result=done)
    if bar is not None:
        bar.update(len(structures) - bar.n)
        bar.close()
    width = max(len(name) for name in rows)
    print(f"\n{'structure':{width}s} {'status':>10s} {'parent':>7s} {'SCF':>6s} {'energy (eV)':>14s} {'fmax':>8s}")
    for name in sorted(rows):
        row = rows[name]
        print(f"{name:{width}s} {str(row['status']):>10s} {str(row['parent_calls']):>7s} "
              f"{str(row.get('scf_iterations') or ''):>6s} {_num(row.get('final_energy'), 14, 6)} "
              f"{_num(row.get('fmax'), 8, 4)}")
    failed = [n for n, r in rows.items() if r["status"] != "converged"]
    print(f"\nsummary table: {out / 'summary.csv'}; {len(rows) - len(failed)} converged, {len(failed)} not")
    return 0 if not failed else 2


def _num(value, width: int, digits: int) -> str:
    try:
        return f"{float(value):{width}.{digits}f}"
    except (TypeError, ValueError):
        return " " * width


def cmd_report(args) -> int:
    from .report import report

    directory = Path(args.run_dir)
    if not directory.is_dir():
        raise UsageError(f"no such run directory: {directory}", "give the --out directory of relax or campaign")
    written = report(directory)
    if not written:
        raise UsageError(f"nothing to plot in {directory}", "expected steps.jsonl (relax) or summary.csv (campaign)")
    for path in written:
        print(f"written {path}")
    return 0


def cmd_demo(args) -> int:
    from .demo import main

    return main(["--out", args.out] if args.out else [])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetuna", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command_name", required=True)
    demo = sub.add_parser("demo", help="relax CO on Cu(111) three ways on the fake VASP (offline)")
    demo.add_argument("--out", help="keep the run directories here")
    demo.add_argument("--debug", action="store_true")
    demo.set_defaults(run=cmd_demo)
    relax = sub.add_parser("relax", help="relax one structure", description="Relax one structure; files go to --out.")
    relax.add_argument("structure", help="structure file (POSCAR, .traj, .extxyz, .cif ...)")
    relax.add_argument("--out", help="run directory (default: <structure>-relax); rerun to resume")
    _common(relax)
    relax.set_defaults(run=cmd_relax)
    campaign = sub.add_parser("campaign", help="relax many structures as Dask tasks",
                              description="Relax many structures, one Dask task each; rerun to resume.")
    campaign.add_argument("inputs", nargs="+", help="directories, globs or files of structures")
    campaign.add_argument("--out", default="campaign", help="campaign directory (default: campaign)")
    campaign.add_argument("--workers", type=int, help="local Dask workers (default: one per core)")
    campaign.add_argument("--scheduler", help="address of a running Dask scheduler (e.g. tcp://host:8786)")
    _common(campaign)
    campaign.set_defaults(run=cmd_campaign)
    report = sub.add_parser("report", help="figures of a relaxation or campaign directory")
    report.add_argument("run_dir")
    report.add_argument("--debug", action="store_true")
    report.set_defaults(run=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_defaults()
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted: finished parent points are on disk; rerun the same command to resume", file=sys.stderr)
        return 130
    except UsageError as error:
        if getattr(args, "debug", False):
            raise
        hint = f" (hint: {error.hint})" if error.hint else ""
        print(f"finetuna: error: {error}{hint}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - one clear line unless --debug
        if getattr(args, "debug", False):
            raise
        first = str(error).splitlines()[0] if str(error) else ""
        print(f"finetuna: error: {type(error).__name__}: {first} (hint: rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
