"""Regenerate benchmarks/RESULTS.md from the JSON files in benchmarks/results/."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import RESULTS
from benchmarks.relaxation_methods import EXACT_PRIOR, STAND_IN

PAGE = Path(__file__).resolve().parent / "RESULTS.md"


EXACT_PRIOR_NOTE = (f" `{EXACT_PRIOR}` is not a method: the default learner whose prior is the parent's own "
                    f"model (the stand-in DFT's {STAND_IN['backend_options']['model']}; on the EMT set, EMT), so the "
                    "prior is exact before any fine-tuning. Its calls are what the default driver itself needs (the "
                    "first point, the trust radius growing from 0.2 A, 0.5 A segments on long paths, stall-guard "
                    "calls, the verification and the tight finish, one call where the verification lands below "
                    "fmax/3): the floor that no better prior can go below with this driver.")


START_MATCH_NOTE = (" `learner-start-match` is the default learner without its checked local GP and without the "
                    "energy rows in its refit (the default until 2026-12-06): the model is the refit surrogate "
                    "force-matched at each segment's start, never corrected by the GP through the nearby parent "
                    "points, and the refit fits forces only.")


def _load(name):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(value, digits=3):
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def _table(rows, columns):
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def _counts(values: dict) -> str:
    """``{"a": 2, "b": {"c": 1}}`` -> "a 2, c 1" (zeros left out)."""
    flat = []
    for key, value in values.items():
        if isinstance(value, dict):
            flat += [(f"{key.split('_')[0]} {k}", v) for k, v in value.items()]
        else:
            flat.append((key, value))
    return ", ".join(f"{k} {v}" for k, v in flat if v) or "-"


def _guards(result: dict) -> dict:
    """The default's guard counts; its runs from before not-better rejections were counted apart say so.

    (The segments learner never rejects a point for being not better: its counts need no such label.)
    """
    guards = dict(result.get("extra", {}).get("guards", {}))
    if "rejected_uphill" in guards and "rejected_not_better" not in guards:
        guards = {("rejected_uphill_or_not_better" if k == "rejected_uphill" else k): v for k, v in guards.items()}
    return guards


def _systems_with_cg(data: dict):
    """``(system, runs, CG's run)`` for every system whose CG baseline ran (the per-system tables' rows)."""
    for system, runs in data["runs"].items():
        cg = runs.get("vasp-cg")
        if cg and "error" not in cg:
            yield system, runs, cg


def _per_system(data: dict) -> list[str]:
    """Per system: the default and the segments learner against CG and BFGS, and what their drivers did."""
    rows = []
    for system, runs, cg in _systems_with_cg(data):
        row = {"system": system, "cg_calls": cg.get("parent_calls"), "cg_status": cg.get("status")}
        for method, key in (("learner-default", "new"), ("learner-start-match", "match"), ("learner-segments", "seg"),
                            ("bfgs", "bfgs"), (EXACT_PRIOR, "exact")):
            result = runs.get(method)
            if not result or "error" in result:
                continue
            row[f"{key}_calls"] = result["parent_calls"]
            row[f"{key}_de"] = result["energy"] - cg["energy"]
        for method, key in (("learner-default", "fired"), ("learner-segments", "seg_fired")):
            row[key] = _counts(_guards(runs.get(method, {})) if method == "learner-default"
                               else runs.get(method, {}).get("extra", {}).get("guards", {}))
        rows.append(row)
    if not any("new_calls" in r or "seg_calls" in r for r in rows):
        return []
    exact = ([("exact_calls", "exact-prior calls"), ("exact_de", "exact-prior ΔE")]
             if any("exact_calls" in r for r in rows) else [])
    match = ([("match_calls", "start-match calls"), ("match_de", "start-match ΔE")]
             if any("match_calls" in r for r in rows) else [])
    segments = ([("seg_calls", "segments calls"), ("seg_de", "segments ΔE")]
                if any("seg_calls" in r for r in rows) else [])
    return ["Per system (ΔE = parent energy of the final point minus CG's, eV; BFGS = ASE BFGS on the parent "
            "(on the generated set only where a learner missed); default guards: uphill segments rejected, "
            "points within the uphill tolerance but with larger parent forces rejected (not better), "
            "finishing phase and its parent calls, reopened finishes; segments driver: uphill segments "
            "rejected, finish probes accepted/declined and finishing parent calls, how segments ended):", "",
            _table(rows, [("system", "system"), ("cg_calls", "CG calls"), ("cg_status", "CG"),
                          ("bfgs_calls", "BFGS calls"), ("bfgs_de", "BFGS ΔE"),
                          ("new_calls", "default calls"), ("new_de", "default ΔE"), *match, *segments, *exact,
                          ("fired", "default guards fired"),
                          *([("seg_fired", "segments driver")] if segments else [])]), ""]


PAPER_LEARNERS = (("learner-relax-only", "relax-only"), ("learner-k-steps", "k-steps"),
                  ("learner-uncertainty", "uncertainty"))


def _paper_per_system(data: dict) -> list[str]:
    """Per system: the paper's learners against CG (calls, ΔE, and how a run ended when not converged)."""
    rows = []
    for system, runs, cg in _systems_with_cg(data):
        row = {"system": system, "cg_calls": cg.get("parent_calls")}
        for method, key in PAPER_LEARNERS:
            result = runs.get(method)
            if not result or "error" in result:
                continue
            row[f"{key}_calls"] = result["parent_calls"]
            delta = f"{result['energy'] - cg['energy']:+.3g}"
            row[f"{key}_de"] = delta if result.get("status") == "converged" else f"{delta} ({result.get('status')})"
        rows.append(row)
    present = [(method, key) for method, key in PAPER_LEARNERS if any(f"{key}_calls" in r for r in rows)]
    if not present:
        return []
    columns = [("system", "system"), ("cg_calls", "CG calls")]
    for _, key in present:
        columns += [(f"{key}_calls", f"{key} calls"), (f"{key}_de", f"{key} ΔE")]
    return ["The paper's learners per system (ΔE as above; where a run did not converge, how it ended: "
            "max-steps = the optimizer's step cap, parent-budget = 150 parent calls):", "", _table(rows, columns), ""]


def build() -> str:
    out = ["# Benchmark results", "",
           "Generated by `python -m benchmarks.run_all` (see `--quick`). Every number below was measured on "
           "the machine named in each section; the parent is the fake VASP (`mock_vasp`), never real VASP.", ""]
    any_machine = next((d["machine"] for d in map(_load, ("relaxation_emt", "scf_interfaces", "mock_vasp_speed"))
                        if d), None)
    if any_machine:
        out += [f"Machine: {any_machine['cores']} cores, {any_machine['memory_gib']} GiB, {any_machine['platform']}, "
                f"Python {any_machine['python']}; run {any_machine['date']}.", ""]

    scf = _load("scf_interfaces")
    if scf:
        out += ["## 1. SCF steps by VASP interface (M1 fresh, M2 WAVECAR, M3 interactive)", "",
                f"Systems: {scf['systems']}." + (" Quick run: GPAW with BFGS only." if scf.get("quick") else ""), "",
                _table(scf["rows"], [("backend", "physics"), ("method", "method"), ("interface", "interface"),
                                     ("dft_calls", "DFT calls"), ("scf_total", "SCF total"),
                                     ("scf_per_call", "SCF/call"), ("scf_vs_m1", "SCF / M1"),
                                     ("seconds", "wall s")]), ""]
        if (RESULTS / "scf_interfaces.png").exists():
            out += ["![SCF relative to M1](results/scf_interfaces.png)", ""]

    for label, title in (("emt", "EMT adsorbate-slab systems, parent = fake VASP with EMT"),
                         ("oc20", "OC20 systems, parent = fake VASP with SevenNet 7net-l3i5 as stand-in DFT "
                                  "(surrogate: SevenNet-0)"),
                         ("generated", "generated development set (ASE-built, OC20-like, 37-52 atoms), parent = "
                                       "fake VASP with 7net-l3i5 as stand-in DFT (surrogate: SevenNet-0)"),
                         ("held-out", "held-out set (built like the generated set with another seed; no setting "
                                      "was chosen on it), parent = fake VASP with 7net-l3i5 as stand-in DFT "
                                      "(surrogate: SevenNet-0)")):
        data = _load(f"relaxation_{label}")
        if not data or "scores" not in data:
            continue
        out += [f"## 2. Relaxation methods: {title}", "",
                f"{len(data['runs'])} systems, fmax = {data['fmax']} eV/A. DFT calls relative to VASP CG (mean with "
                "standard error, and pooled = sum/sum); accuracy = parent fmax <= 0.03 eV/A and E <= E_CG + 0.02 eV. "
                "Each method is scored on the systems it ran on (column `systems`). ASE's GPMin refits a Gaussian "
                "process over all points at every step, so its cost grows steeply with steps and atoms; a GPMin "
                "run stops after 600 s and is then left out of the ratios and accuracy (column `time-capped`)."
                + (EXACT_PRIOR_NOTE if any(EXACT_PRIOR in r for r in data["runs"].values()) else "")
                + (START_MATCH_NOTE if any("learner-start-match" in r for r in data["runs"].values()) else ""),
                "", _table(data["scores"], [("method", "method"), ("systems", "systems"), ("ratio_mean", "calls/CG"),
                                            ("ratio_sem", "sem"), ("ratio_pooled", "pooled"),
                                            ("accuracy", "accuracy"), ("time_capped", "time-capped"),
                                            ("baseline_capped", "CG not converged (left out)")]), ""]
        for picture in data.get("figures", []):
            out += [f"![{picture}](results/{picture})", ""]
        out += _per_system(data)
        out += _paper_per_system(data)

    tune = _load("finetune_oc20") or _load("finetune_oc20_quick")
    if tune:
        scope = "quick run: 3 smallest systems, paper recipe 50 epochs" if tune.get("quick") else "10 systems"
        out += [f"## 3. Fine-tuning SevenNet-0 on real DFT labels (OC20 VASP trajectories, {scope})", "",
                "Median over systems of fine-tuned / pre-trained force MAE on free atoms over the last 20% of frames, "
                "after k parent points from the first 80%; systems improved; seconds per parent call "
                f"(Jacobian median {tune['median_seconds_jacobian_per_frame']:.2f} s per frame).", "",
                _table(tune["summary"], [("method", "method"), ("k", "points"), ("n_systems", "systems"),
                                         ("median_ratio", "MAE ratio"), ("improved", "improved"),
                                         ("median_seconds_fit", "fit s"),
                                         ("median_seconds_per_call", "s per call incl. J")]), ""]
        per_system = sorted(
            ({"sid": r["sid"], "atoms": r["n_atoms"], "free": r["n_free"], "J": r["seconds_jacobian_newest"],
              "fit": r["seconds_fit"], "call": r["seconds_jacobian_newest"] + r["seconds_fit"]}
             for r in tune.get("records", []) if r["method"] == "ridge" and r["k"] == 3),
            key=lambda row: row["atoms"],
        )
        if per_system:
            out += ["Ridge refit with 3 points, cost of one parent call by system size (Jacobian of the newest "
                    f"point + fit, {tune.get('threads', 2)} CPU threads; the target is <= 1 s at 50 atoms):", "",
                    _table(per_system, [("sid", "system"), ("atoms", "atoms"), ("free", "free atoms"),
                                        ("J", "J s"), ("fit", "fit s"), ("call", "s per call")]), ""]

    wall = _load("walltime_model")
    if wall:
        out += ["## 4. Wall-time model", "",
                f"Projected with a single point of {wall['single_point_seconds']:.0f} s (the paper's median) for a "
                "fresh VASP, each interface's call cost scaled by its SCF steps per call on the fake "
                f"(M2 {wall['interface_costs']['M2']:.2f}, M3 {wall['interface_costs']['M3']:.2f} of M1; VASP CG by "
                "its "
                "own SCF steps per call), plus the Python time measured here (fine-tuning after the parent call "
                "returned, surrogate inference, driver). Python share = that time over the projected total. A speed-up "
                "counts only with its accuracy (column `accuracy`, same rule as section 2). Seconds are medians per "
                "run as measured in each method's own benchmark runs on the 2-core machine, whose load differed: "
                "learner-default's runs ran as two benchmark processes with test runs beside them for most of their "
                "time (its inference and driver seconds are the most inflated; since 2026-12-06 the finish probe's "
                "model steps count as inference, not driver time), several other rows were measured beside two "
                "to four processes. "
                "Contention only adds "
                "time, so each inference figure is an upper bound, and a comparison between methods holds only where "
                "the loads were alike.", "",
                _table(wall["summary"], [("set", "set"), ("method", "method"), ("systems", "systems"),
                                         ("accuracy", "accuracy"), ("finetune_s", "fine-tune s"),
                                         ("predict_s", "inference s"),
                                         ("overhead_s", "driver s"), ("fraction_python", "Python share"),
                                         ("speedup_median", "speed-up vs CG (median)"),
                                         ("speedup_mean", "(mean)")]), ""]

    speed = _load("mock_vasp_speed")
    overhead = _load("interactive_overhead")
    if speed or overhead:
        out += ["## 5. Driver overhead and pause latency", ""]
    if speed:
        out += ["Fake VASP (serial, EMT): start-up to the first prompt and per-step time outside its physics.", "",
                _table(speed["rows"], [("natoms", "atoms"), ("startup_s", "start-up s"), ("step_ms", "step ms"),
                                       ("emt_ms", "EMT ms"), ("scf_model_ms", "SCF model ms"),
                                       ("overhead_ms", "overhead ms")]), ""]
    if overhead:
        out += ["`VaspInteractive.calculate()` beyond the fake's own step time:", "",
                _table(overhead["overhead"], [("natoms", "atoms"), ("steps", "steps"), ("overhead_ms", "median ms"),
                                              ("overhead_p90_ms", "p90 ms"), ("first_tenth_ms", "first 10%"),
                                              ("last_tenth_ms", "last 10%")]), "",
                f"Pause/resume under `mpirun -np 2`: {_fmt(overhead['pause'])}", "",
                _table(overhead["fresh_vs_interactive"], [("interface", "interface"), ("steps", "steps"),
                                                          ("scf_total", "SCF total"), ("seconds", "wall s")]), ""]
    campaign = _load("campaign_throughput")
    if campaign:
        out += ["## 6. Campaign throughput (Dask, local cluster)", "", f"Setup: {campaign['setup']}.", "",
                _table(campaign["rows"], [("workers", "workers"), ("relaxations", "relaxations"),
                                          ("converged", "converged"), ("wall_s", "wall s"),
                                          ("per_minute", "per minute"), ("task_s_median", "task s (median)"),
                                          ("overhead_per_task_s", "overhead per task s"),
                                          ("empty_task_ms", "empty Dask task ms")]), ""]

    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    PAGE.write_text(build())
    print(f"written {PAGE}")


if __name__ == "__main__":
    main()
