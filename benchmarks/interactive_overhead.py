"""What VaspInteractive adds per step, pause/resume latency, and the fresh-process comparison.

* overhead of ``calculate()`` beyond the fake's own step time (input read -> next prompt, from the
  fake's profile), for 10/100/500 atoms and 10/100/1000 steps; targets: < 2 ms at 100 atoms, flat
  in the number of steps;
* pause and resume latency under ``mpirun -np 2`` (both verified); target: each < 50 ms;
* the same BFGS relaxation with ASE's ``Vasp`` (a fresh fake VASP per step) for comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import MOCK_VASP, copper_slab, mpirun, prepare_environment, table, write_results

PARAMS = dict(xc="PBE", kpts=(1, 1, 1), encut=300)


def overhead(natoms: int, steps: int) -> dict:
    from vasp_interactive import VaspInteractive

    atoms = copper_slab(natoms)
    rng = np.random.default_rng(0)
    base = atoms.positions.copy()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        (directory / "mock_vasp.json").write_text(json.dumps({"profile": True}))
        calls = []
        with VaspInteractive(command=MOCK_VASP, directory=directory, txt=None, **PARAMS) as calc:
            atoms.calc = calc
            atoms.get_forces()
            for _ in range(steps):
                atoms.positions = base + rng.normal(scale=0.01, size=base.shape)
                started = time.perf_counter()
                atoms.get_forces()
                calls.append((started, time.perf_counter()))
        profile = [json.loads(line) for line in (directory / "mock_vasp.profile.jsonl").read_text().splitlines()]
    inside = {r["step"]: r for r in profile if "input_read" in r}
    extra = []
    for index, (started, ended) in enumerate(calls, start=2):
        record = inside.get(index)
        if record is not None:
            extra.append((ended - started) - (record["prompt"] - record["input_read"]))
    extra_ms = 1000 * np.array(extra)
    tenth = max(1, len(extra_ms) // 10)
    return {
        "natoms": len(atoms),
        "steps": steps,
        "overhead_ms": float(np.median(extra_ms)),
        "overhead_p90_ms": float(np.percentile(extra_ms, 90)),
        "first_tenth_ms": float(np.median(extra_ms[:tenth])),
        "last_tenth_ms": float(np.median(extra_ms[-tenth:])),
        "call_ms": 1000 * float(np.median([b - a for a, b in calls])),
    }


def pause_latency(cycles: int) -> dict:
    from vasp_interactive import VaspInteractive

    launcher = mpirun()
    if launcher is None:
        return {"skipped": "no mpirun"}
    atoms = copper_slab(100)
    with tempfile.TemporaryDirectory() as tmp, VaspInteractive(command=[launcher, "-np", "2", MOCK_VASP],
                                                               directory=tmp, txt=None, **PARAMS) as calc:
        atoms.calc = calc
        atoms.get_forces()
        pauses, resumes, verified = [], [], 0
        for _ in range(cycles):
            started = time.perf_counter()
            report = calc.pause()
            pauses.append(time.perf_counter() - started)
            verified += int(report.verified)
            started = time.perf_counter()
            calc.resume()
            resumes.append(time.perf_counter() - started)
        strategy = report.strategy
    return {
        "strategy": strategy,
        "cycles": cycles,
        "verified": verified,
        "pause_ms_median": 1000 * statistics.median(pauses),
        "pause_ms_max": 1000 * max(pauses),
        "resume_ms_median": 1000 * statistics.median(resumes),
        "resume_ms_max": 1000 * max(resumes),
    }


def fresh_vs_interactive() -> list[dict]:
    from ase.build import add_adsorbate, fcc111, molecule
    from ase.calculators.vasp import Vasp
    from ase.constraints import FixAtoms
    from ase.optimize import BFGS

    from vasp_interactive import VaspInteractive

    def system():
        slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
        add_adsorbate(slab, molecule("CO"), 1.9, "ontop")
        slab.pbc = True
        slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag >= 2]))
        return slab

    rows = []
    for label in ("ASE Vasp (fresh process per step)", "VaspInteractive"):
        atoms = system()
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            if label.startswith("ASE"):
                calc = Vasp(command=MOCK_VASP, directory=tmp, ibrion=-1, nsw=0, **PARAMS)
                scf = []
                atoms.calc = calc

                class Counter(BFGS):
                    def log(self, forces=None, scf=scf, calc=calc):
                        scf.append(calc.get_number_of_iterations())

                opt = Counter(atoms, logfile=None)
                opt.run(fmax=0.03, steps=200)
                total_scf = sum(scf)
            else:
                with VaspInteractive(command=MOCK_VASP, directory=tmp, txt=None, **PARAMS) as calc:
                    atoms.calc = calc
                    opt = BFGS(atoms, logfile=None)
                    opt.run(fmax=0.03, steps=200)
                total_scf = sum(s.scf_iterations for s in calc.steps)
            seconds = time.perf_counter() - started
        rows.append({"interface": label, "steps": opt.nsteps + 1, "scf_total": total_scf, "seconds": seconds,
                     "ms_per_step": 1000 * seconds / (opt.nsteps + 1),
                     "energy": atoms.get_potential_energy(force_consistent=True)})
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 and 100 steps only, fewer pause cycles")
    args = parser.parse_args(argv)
    prepare_environment()
    plan = [(n, s) for n in (10, 100, 500) for s in (10, 100, 1000)]
    if args.quick:
        plan = [(n, s) for n, s in plan if s <= 100 and not (n == 500 and s == 100)]
    rows = [overhead(n, s) for n, s in plan]
    print("VaspInteractive.calculate() overhead beyond the fake's own step time")
    print(table(rows, [("natoms", "atoms"), ("steps", "steps"), ("overhead_ms", "median ms"),
                       ("overhead_p90_ms", "p90 ms"), ("first_tenth_ms", "first 10% ms"),
                       ("last_tenth_ms", "last 10% ms"), ("call_ms", "whole call ms")]))
    pause = pause_latency(10 if args.quick else 50)
    print("\npause / resume latency under mpirun -np 2 (verified stops)")
    print(json.dumps(pause, indent=1))
    comparison = fresh_vs_interactive()
    print("\nsame BFGS relaxation (CO on Cu(111), 14 atoms) through the fake VASP")
    print(table(comparison, [("interface", "interface"), ("steps", "steps"), ("scf_total", "SCF total"),
                             ("seconds", "wall s"), ("ms_per_step", "ms/step"), ("energy", "E (eV)")]))
    payload = {"quick": args.quick, "overhead": rows, "pause": pause, "fresh_vs_interactive": comparison,
               "targets": {"overhead_ms_at_100": 2.0, "pause_ms": 50.0, "resume_ms": 50.0}}
    path = write_results("interactive_overhead", payload)
    print(f"written {path}")
    return payload


if __name__ == "__main__":
    main()
