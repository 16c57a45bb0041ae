"""Run every benchmark and regenerate benchmarks/RESULTS.md.

``--quick`` (about 20 minutes on 2 cores): fewer systems and steps. Without it the full run takes
hours (24 EMT and 10 OC20 systems with every method) and shows a progress bar.
"""

from __future__ import annotations

import argparse
import time

from benchmarks import (
    campaign_throughput,
    finetune_oc20,
    interactive_overhead,
    mock_vasp_speed,
    relaxation_methods,
    report,
    scf_interfaces,
    walltime_model,
)
from benchmarks.common import RESULTS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", default="", help="comma list of steps to skip")
    args = parser.parse_args(argv)
    quick = ["--quick"] if args.quick else []
    if not args.quick:
        print("full benchmark run: this takes hours on 2 cores (progress bars below); use --quick for ~20 min")
    steps = [
        ("mock_vasp_speed", lambda: mock_vasp_speed.main(quick)),
        ("interactive_overhead", lambda: interactive_overhead.main(quick)),
        ("scf_interfaces", lambda: scf_interfaces.main(quick)),
        ("relaxation_methods", lambda: relaxation_methods.main(quick)),
        ("finetune_oc20", lambda: finetune_oc20.main(
            ["--quick", "--out", str(RESULTS / "finetune_oc20_quick.json")] if args.quick else [])),
        ("campaign_throughput", lambda: campaign_throughput.main(quick)),
        ("walltime_model", lambda: walltime_model.main(quick)),
    ]
    skip = set(args.skip.split(","))
    for name, run in steps:
        if name in skip:
            continue
        started = time.perf_counter()
        print(f"\n=== {name} ===", flush=True)
        run()
        print(f"=== {name}: {time.perf_counter() - started:.0f} s ===", flush=True)
    report.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
