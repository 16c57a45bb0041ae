"""How fast the fake VASP is outside its physics: start-up to the first prompt, per-step overhead.

Targets (issue 2): under 1 s to the first prompt with EMT at 100 atoms; under 5 ms per interactive
step beyond the physics (EMT + the SCF model), measured inside the fake (input read -> next prompt).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import MOCK_VASP, copper_slab, prepare_environment, table, write_results


def write_job(directory: Path, atoms) -> None:
    from ase.calculators.vasp.create_input import GenerateVaspInput

    generator = GenerateVaspInput()
    generator.set(xc="PBE", kpts=(1, 1, 1), encut=300, interactive=True, ibrion=-1, potim=0.0, nsw=5000,
                  isym=0, iwavpr=11)
    generator.initialize(atoms)
    generator.write_input(atoms, directory=str(directory))
    (directory / "mock_vasp.json").write_text(json.dumps({"profile": True}))


def measure(natoms: int, steps: int) -> dict:
    atoms = copper_slab(natoms)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_job(directory, atoms)
        frac = atoms.get_scaled_positions()[np.argsort(atoms.numbers, kind="stable")]
        started = time.perf_counter()
        process = subprocess.Popen([MOCK_VASP], cwd=directory, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True, bufsize=1)

        def until_prompt():
            while True:
                line = process.stdout.readline()
                if not line or line.strip().endswith("reading from stdin"):
                    return line

        until_prompt()
        startup = time.perf_counter() - started
        rng = np.random.default_rng(1)
        for _ in range(steps):
            moved = frac + rng.normal(scale=0.002, size=frac.shape)
            process.stdin.write("".join(f"{x:.16f} {y:.16f} {z:.16f}\n" for x, y, z in moved))
            process.stdin.flush()
            until_prompt()
        process.stdin.close()
        process.kill()
        process.wait()
        records = [json.loads(line) for line in (directory / "mock_vasp.profile.jsonl").read_text().splitlines()]
    steps_data = [r for r in records if "input_read" in r]
    inside = [r["prompt"] - r["input_read"] for r in steps_data]
    physics = [r["physics"] + r["scf_model"] for r in steps_data]
    overhead = [a - b for a, b in zip(inside, physics)]
    return {
        "natoms": len(atoms),
        "startup_s": startup,
        "step_ms": 1000 * statistics.median(inside),
        "physics_ms": 1000 * statistics.median(physics),
        "emt_ms": 1000 * statistics.median(r["physics"] for r in steps_data),
        "scf_model_ms": 1000 * statistics.median(r["scf_model"] for r in steps_data),
        "overhead_ms": 1000 * statistics.median(overhead),
        "overhead_p90_ms": 1000 * float(np.percentile(overhead, 90)),
        "scf_iterations": statistics.median(r["scf_iterations"] for r in steps_data),
        "steps": len(steps_data),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    args = parser.parse_args(argv)
    prepare_environment()
    steps = 15 if args.quick else 50
    rows = [measure(n, steps) for n in (10, 100, 500)]
    print("fake VASP speed (EMT backend, serial, interactive mode)")
    print(table(rows, [("natoms", "atoms"), ("startup_s", "start-up s"), ("step_ms", "step ms"),
                       ("emt_ms", "EMT ms"), ("scf_model_ms", "SCF model ms"), ("overhead_ms", "overhead ms"),
                       ("overhead_p90_ms", "p90 ms"), ("scf_iterations", "SCF/step")]))
    path = write_results("mock_vasp_speed", {"quick": args.quick, "rows": rows,
                                             "targets": {"startup_s_at_100": 1.0, "overhead_ms": 5.0}})
    print(f"written {path}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
