"""Figures of a finished (or running) relaxation or campaign directory."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def relaxation_figures(directory: Path) -> list[Path]:
    """energy.png (energy per force call, parent calls marked) and surrogate_error.png."""
    lines = (directory / "steps.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    if not records:
        return []
    plt = _pyplot()
    written = []
    steps = list(range(1, len(records) + 1))
    energies = [r["energy"] for r in records]
    parent = [(i, r["energy"]) for i, r in zip(steps, records) if r["source"] != "surrogate"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, energies, "-", color="0.5", lw=1, label="force calls")
    if parent:
        ax.plot(*zip(*parent), "o", color="C3", label="parent (DFT) calls")
    ax.set_xlabel("force call")
    ax.set_ylabel("energy (eV)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = directory / "energy.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    errors = [(i, r["surrogate_force_mae"]) for i, r in zip(steps, records)
              if r["source"] == "parent" and r.get("surrogate_force_mae") is not None]
    if errors:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.semilogy(*zip(*errors), "o-", color="C0")
        ax.set_xlabel("force call of the parent call")
        ax.set_ylabel("surrogate force MAE on free atoms (eV/A)")
        ax.set_title("surrogate error at each parent call (before fine-tuning on it)", fontsize=9)
        fig.tight_layout()
        path = directory / "surrogate_error.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def campaign_figures(directory: Path, fmax: float = 0.03) -> list[Path]:
    """accuracy_vs_speed.png: parent calls against final parent fmax for every structure."""
    with open(directory / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    points = []
    for row in rows:
        try:
            points.append((row["structure"], float(row["parent_calls"]), float(row["fmax"]), row["status"]))
        except (TypeError, ValueError):
            continue
    if not points:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, calls, force, status in points:
        ax.semilogy(calls, force, "o", color="C2" if status == "converged" else "C3")
        ax.annotate(name, (calls, force), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(fmax, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("parent (DFT) calls")
    ax.set_ylabel("final parent fmax (eV/A)")
    converged = sum(p[3] == "converged" for p in points)
    ax.set_title(f"{converged}/{len(points)} converged; mean {sum(p[1] for p in points) / len(points):.1f} calls",
                 fontsize=9)
    fig.tight_layout()
    path = directory / "accuracy_vs_speed.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written = [path]
    for sub in sorted(p for p in directory.iterdir() if (p / "steps.jsonl").is_file()):
        written.extend(relaxation_figures(sub))
    return written


def report(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if (directory / "summary.csv").is_file():
        return campaign_figures(directory)
    if (directory / "steps.jsonl").is_file():
        return relaxation_figures(directory)
    return []
