"""Throughput of a campaign: 32 small EMT relaxations (BFGS) on the fake VASP with 1 and 2 workers.

Reported: wall time, relaxations per minute, and the scheduling overhead per task: worker-seconds
not spent inside the tasks, ``(wall * workers - sum(task seconds)) / tasks`` (this includes the
start of the local Dask cluster), plus the round trip of an empty Dask task.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import prepare_environment, table, write_results


def structures(directory: Path, count: int) -> dict[str, str]:
    import numpy as np
    from ase.build import add_adsorbate, fcc111
    from ase.constraints import FixAtoms
    from ase.io import write

    rng = np.random.default_rng(5)
    metals, adsorbates = ["Cu", "Ag", "Au", "Ni", "Pd", "Pt"], ["O", "N", "C", "H"]
    paths = {}
    for index in range(count):
        slab = fcc111(metals[index % 6], (2, 2, 3), vacuum=6.0)
        add_adsorbate(slab, adsorbates[index % 4], 1.3, "fcc")
        slab.positions[-1, :2] += rng.normal(scale=0.2, size=2)
        slab.pbc = True
        slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag >= 2]))
        path = directory / f"s{index:02d}.traj"
        write(path, slab)
        paths[path.stem] = str(path)
    return paths


def empty_task_roundtrip(workers: int) -> float:
    from finetuna_core.campaign import local_client

    with local_client(workers) as client:
        client.submit(sum, [1]).result()
        times = []
        for index in range(30):
            started = time.perf_counter()
            client.submit(sum, [index], pure=False).result()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="16 structures instead of 32")
    args = parser.parse_args(argv)
    prepare_environment()
    from finetuna_core.campaign import RelaxSettings, run_campaign

    count = 16 if args.quick else 32
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = structures(Path(tmp), count)
        for workers in (1, 2):
            settings = RelaxSettings(method="bfgs", parent="mock", vasp_parameters={"kpts": [1, 1, 1]})
            started = time.perf_counter()
            result = run_campaign(inputs, Path(tmp) / f"campaign-{workers}", settings, workers=workers)
            wall = time.perf_counter() - started
            task_seconds = sum(float(r["wall_seconds"]) for r in result.values())
            rows.append({"workers": workers, "relaxations": count, "wall_s": wall,
                         "per_minute": 60 * count / wall,
                         "converged": sum(r["status"] == "converged" for r in result.values()),
                         "task_s_median": statistics.median(float(r["wall_seconds"]) for r in result.values()),
                         "overhead_per_task_s": (wall * workers - task_seconds) / count,
                         "empty_task_ms": 1000 * empty_task_roundtrip(workers)})
    print(table(rows, [("workers", "workers"), ("relaxations", "relaxations"), ("converged", "converged"),
                       ("wall_s", "wall s"), ("per_minute", "per minute"), ("task_s_median", "task s"),
                       ("overhead_per_task_s", "overhead/task s"), ("empty_task_ms", "empty task ms")]))
    path = write_results("campaign_throughput", {"quick": args.quick, "rows": rows,
                                                 "setup": "BFGS, fmax 0.03, fake VASP (EMT) via VaspInteractive"})
    print(f"written {path}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
