"""Fine-tuning benchmark of the SevenNet-0 surrogate on the OC20 VASP trajectories.

For each trajectory: the last 20% of frames are the test window; 1, 3 and 5 parent points
are chosen evenly from the first 80% (1 = first frame; 3 = first, middle, last before the
window; 5 = evenly spaced).  For each method the surrogate is reset, fine-tuned on those
points, and its free-atom force MAE (mean |dF| over the Cartesian components of the free
atoms, averaged over test frames) is compared with the pre-trained model's.

Prints a table and writes JSON (``--out``).  Not a timed test: timings depend on the load
of the machine.  Example::

    python benchmarks/finetune_oc20.py --quick
    python benchmarks/finetune_oc20.py --methods ridge
    python benchmarks/finetune_oc20.py --methods paper --systems 1447590,1697959
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "benchmarks" / "oc20_finetuna"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of random*.traj")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/finetune_oc20.json")
    ap.add_argument("--quick", action="store_true", help="3 smallest systems, paper with 50 epochs")
    ap.add_argument("--methods", default="ridge,paper", help="comma list of ridge,paper")
    ap.add_argument("--sizes", default="1,3,5", help="numbers of parent points")
    ap.add_argument("--systems", default="", help="comma list of sids (default: all)")
    ap.add_argument("--paper-epochs", type=int, default=None, help="default 400 (50 with --quick)")
    ap.add_argument("--paper-backend", default="jacobian", choices=["jacobian", "autograd"])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra SevenNetSettings option for all methods, e.g. cv_rule=min",
    )
    return ap.parse_args(argv)


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def choose_frames(n_frames: int, k: int) -> tuple[list[int], int]:
    """Indices of k training frames (evenly over the first 80%) and the test-window start."""
    n_pool = n_frames - max(1, round(0.2 * n_frames))
    if k == 1:
        return [0], n_pool
    idx = np.linspace(0, n_pool - 1, k).round().astype(int)
    return sorted(set(int(i) for i in idx)), n_pool


def free_mae(surrogate: Any, frames: list[Any], free: np.ndarray) -> float:
    errs = []
    for atoms in frames:
        ref = atoms.get_forces(apply_constraint=False)[free]
        errs.append(np.abs(surrogate.predict(atoms).forces[free] - ref).mean())
    return float(np.mean(errs))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ase.io
    import torch

    from finetuna_core.surrogates import LabelledPoint, free_atom_mask
    from finetuna_core.surrogates.sevennet import SevenNetSurrogate

    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    sizes = [int(k) for k in args.sizes.split(",") if k]
    epochs = args.paper_epochs or (50 if args.quick else 400)
    extra = dict(kv.split("=", 1) for kv in args.option)
    extra = {k: _parse_value(v) for k, v in extra.items()}

    paths = sorted(args.data.glob("random*.traj"), key=lambda p: p.stat().st_size)
    if not paths:
        print(f"no random*.traj in {args.data}", file=sys.stderr)
        return 2
    if args.systems:
        wanted = {s.strip().removeprefix("random") for s in args.systems.split(",")}
        paths = [p for p in paths if p.stem.removeprefix("random") in wanted]
    if args.quick and not args.systems:
        paths = paths[:3]

    # One model and one Jacobian cache shared by both methods; the method is switched
    # with update_settings before each fine-tune.
    sur = SevenNetSurrogate(device=args.device, **extra)
    method_settings = {
        "ridge": {"method": "ridge"},
        "paper": {"method": "paper", "epochs": epochs, "paper_backend": args.paper_backend},
    }
    label = {
        "ridge": "ridge",
        "paper": f"paper({epochs} ep, {args.paper_backend})",
    }
    records: list[dict[str, Any]] = []
    jac_times: list[float] = []
    for path in paths:
        sid = path.stem.removeprefix("random")
        frames = ase.io.read(path, ":")
        free = free_atom_mask(frames[0])
        _, n_pool = choose_frames(len(frames), 1)
        test = frames[n_pool:]
        sur.reset()
        mae0 = free_mae(sur, test, free)
        # J per training frame, timed once (then cached for both methods)
        needed = sorted({i for k in sizes for i in choose_frames(len(frames), k)[0]})
        t_frame = {}
        for i in needed:
            t0 = time.perf_counter()
            sur.jacobian(frames[i])
            t_frame[i] = time.perf_counter() - t0
        jac_times += list(t_frame.values())
        for m in methods:
            sur.update_settings(**method_settings[m])
            for k in sizes:
                idx, _ = choose_frames(len(frames), k)
                points = [LabelledPoint.from_atoms(frames[i]) for i in idx]
                sur.reset()
                report = sur.fine_tune(points)
                mae = free_mae(sur, test, free)
                rec = {
                    "sid": sid,
                    "n_atoms": len(frames[0]),
                    "n_free": int(free.sum()),
                    "method": m,
                    "k": k,
                    "frames": idx,
                    "mae_pretrained": mae0,
                    "mae_finetuned": mae,
                    "ratio": mae / mae0,
                    "seconds_fit": report.seconds,  # Jacobians cached: solve / training only
                    "seconds_jacobian_newest": t_frame[idx[-1]],
                    "details": {
                        k2: v
                        for k2, v in report.details.items()
                        if k2 in ("lambda_rel", "cv_mode", "kept_pretrained", "loss_last_epoch")
                        or k2.startswith("train_mae")
                    },
                }
                records.append(rec)
                print(
                    f"{sid:>8} {len(frames[0]):3d} atoms {int(free.sum()):3d} free | "
                    f"{label[m]:<24} k={k}: MAE {mae0:.4f} -> {mae:.4f} "
                    f"(x{mae / mae0:.2f})  fit {report.seconds:.3f}s  "
                    f"J {t_frame[idx[-1]]:.2f}s",
                    flush=True,
                )

    print()
    print(
        f"{'method':<26}{'k':>3}{'median ratio':>14}{'improved':>10}{'med fit s':>11}{'med J s':>9}{'med call s':>12}"
    )
    summary = []
    for m in methods:
        for k in sizes:
            rows = [r for r in records if r["method"] == m and r["k"] == k]
            ratios = np.array([r["ratio"] for r in rows])
            fit = np.array([r["seconds_fit"] for r in rows])
            jac = np.array([r["seconds_jacobian_newest"] for r in rows])
            entry = {
                "method": label[m],
                "k": k,
                "n_systems": len(rows),
                "median_ratio": float(np.median(ratios)),
                "improved": int(np.sum(ratios < 1.0)),
                "median_seconds_fit": float(np.median(fit)),
                "median_seconds_jacobian_newest": float(np.median(jac)),
                "median_seconds_per_call": float(np.median(fit + jac)),
            }
            summary.append(entry)
            print(
                f"{label[m]:<26}{k:>3}{entry['median_ratio']:>14.3f}"
                f"{entry['improved']:>6}/{len(rows):<3}{entry['median_seconds_fit']:>11.3f}"
                f"{entry['median_seconds_jacobian_newest']:>9.2f}"
                f"{entry['median_seconds_per_call']:>12.2f}"
            )
    med_j = float(np.median(jac_times)) if jac_times else float("nan")
    print(
        f"\nJacobian per frame ({sur.settings.jacobian_mode} mode): median {med_j:.2f} s over {len(jac_times)} frames"
    )
    print("'med call s' = J of the newest point + fit, i.e. the cost of one parent call.")
    if args.quick:
        print("QUICK RUN: 3 systems, paper recipe with", epochs, "epochs.")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "quick": args.quick,
        "paper_epochs": epochs,
        "paper_backend": args.paper_backend,
        "options": extra,
        "threads": args.threads,
        "host": platform.node(),
        "median_seconds_jacobian_per_frame": med_j,
        "summary": summary,
        "records": records,
    }
    args.out.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
