"""Where the online learner's wall time goes, and what it would be against real VASP (Fig. 5c, S4).

Measured: the learner's time in parent calls, fine-tuning (what is left after the Jacobian was
computed during the parent call), surrogate inference and driver overhead, from the relaxation
benchmark. Projected: the speed-up over VASP CG when a single point costs what the paper's data
say (median 1374 s for a fresh VASP), each interface's cost scaled by its SCF steps per call as
measured on the fake (scf_interfaces benchmark), and Python's own time as measured here.
"""

from __future__ import annotations

import argparse
import json
import statistics

from benchmarks.common import RESULTS, table, write_results
from benchmarks.relaxation_methods import EXACT_PRIOR

SINGLE_POINT_SECONDS = 1374.0  # median VASP single point in the paper's data (fresh process)


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def interface_costs(scf: dict | None) -> dict[str, float]:
    """Cost of one DFT call relative to a fresh VASP, by interface, from SCF steps per call."""
    if not scf:
        return {"M1": 1.0, "M2": 1.0, "M3": 1.0, "source": "no scf_interfaces results: all 1.0"}
    rows = [r for r in scf["rows"] if r["backend"].startswith("model") and r["method"] == "bfgs"]
    per = {r["interface"]: r["scf_per_call"] for r in rows}
    return {k: per[k] / per["M1"] for k in ("M1", "M2", "M3")} | {"source": "fake SCF model, BFGS runs"}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.parse_args(argv)
    costs = interface_costs(load("scf_interfaces"))
    rows = []
    for label in ("emt", "oc20", "generated", "held-out"):
        data = load(f"relaxation_{label}")
        if not data:
            continue
        for system, methods in data["runs"].items():
            cg = methods.get("vasp-cg")
            for method, result in methods.items():
                if (not method.startswith("learner") or method == EXACT_PRIOR or "error" in result or not cg
                        or "error" in cg):  # the exact prior is a measurement of the driver, not a method
                    continue
                parent = result.get("seconds_parent", 0.0)
                finetune = result.get("seconds_finetune", 0.0)
                predict = result.get("seconds_predict", 0.0)
                total = result.get("seconds", 0.0)
                overhead = max(0.0, total - parent - finetune - predict)
                cg_scf_per_call = (cg.get("scf_iterations") or 0) / max(1, cg["parent_calls"])
                cg_cost = cg_scf_per_call / _m1_scf_per_call(load("scf_interfaces")) if cg_scf_per_call else 1.0
                cg_time = cg["parent_calls"] * SINGLE_POINT_SECONDS * cg_cost
                learner_time = result["parent_calls"] * SINGLE_POINT_SECONDS * costs["M3"] + finetune + predict \
                    + overhead
                rows.append({"set": label, "system": system, "method": method, "parent_s": parent,
                             "finetune_s": finetune, "predict_s": predict, "overhead_s": overhead,
                             "fraction_python": (finetune + predict + overhead) / learner_time,
                             "projected_speedup": cg_time / learner_time})
    from finetuna_core.metrics import score

    summary = []
    for key in sorted({(r["set"], r["method"]) for r in rows}):
        group = [r for r in rows if (r["set"], r["method"]) == key]
        accuracy = score(load(f"relaxation_{key[0]}")["runs"], key[1]).accuracy
        summary.append({"set": key[0], "method": key[1], "systems": len(group), "accuracy": accuracy,
                        "finetune_s": statistics.median(r["finetune_s"] for r in group),
                        "predict_s": statistics.median(r["predict_s"] for r in group),
                        "overhead_s": statistics.median(r["overhead_s"] for r in group),
                        "fraction_python": statistics.median(r["fraction_python"] for r in group),
                        "speedup_median": statistics.median(r["projected_speedup"] for r in group),
                        "speedup_mean": statistics.mean(r["projected_speedup"] for r in group)})
    print(f"interface cost per DFT call relative to a fresh VASP (M1): {costs}")
    print(table(summary, [("set", "set"), ("method", "method"), ("systems", "systems"), ("accuracy", "accuracy"),
                          ("finetune_s", "fine-tune s"), ("predict_s", "inference s"), ("overhead_s", "overhead s"),
                          ("fraction_python", "Python share"), ("speedup_median", "speed-up median"),
                          ("speedup_mean", "mean")]))
    payload = {"single_point_seconds": SINGLE_POINT_SECONDS, "interface_costs": costs, "summary": summary,
               "rows": rows}
    path = write_results("walltime_model", payload)
    print(f"written {path}")
    return payload


def _m1_scf_per_call(scf: dict | None) -> float:
    if not scf:
        return 1.0
    rows = [r for r in scf["rows"] if r["backend"].startswith("model") and r["method"] == "bfgs"
            and r["interface"] == "M1"]
    return rows[0]["scf_per_call"] if rows else 1.0


if __name__ == "__main__":
    main()
