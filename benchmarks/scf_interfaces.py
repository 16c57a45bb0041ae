"""SCF iterations by VASP interface (the paper's M1/M2/M3, its Fig. 5b).

The same relaxations (ASE BFGS, ASE GPMin, and the online learner) through three interfaces to the
fake VASP: M1 a fresh process per step (``ISTART = 0``, ASE's ``Vasp``), M2 a fresh process that
reads the previous WAVECAR (``ISTART = 1``), M3 ``VaspInteractive``. Two physics backends: the
fake's own SCF model (EMT energies) and GPAW, whose SCF iterations are real.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import MOCK_VASP, prepare_environment, table, write_results

GPAW_SETTINGS = {"mode": "pw", "ecut": 250.0, "xc": "PBE", "occupations": {"name": "fermi-dirac", "width": 0.1}}
VASP = {"xc": "PBE", "encut": 300, "kpts": (2, 2, 1), "ismear": 1, "sigma": 0.1, "ediff": 1e-5}


def emt_system():
    from ase.build import add_adsorbate, fcc111
    from ase.constraints import FixAtoms

    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.3, "fcc")
    slab.positions[-1] += [0.3, 0.2, 0.0]
    slab.pbc = True
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag >= 2]))
    return slab


def gpaw_system():
    """Cu(111) 1x1 with three layers and H off its fcc site: small enough for GPAW in seconds."""
    from ase.build import add_adsorbate, fcc111
    from ase.constraints import FixAtoms

    slab = fcc111("Cu", (1, 1, 3), vacuum=4.0)
    add_adsorbate(slab, "H", 1.2, "fcc")
    slab.center(vacuum=4.0, axis=2)
    slab.pbc = True
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag >= 2]))
    return slab


class FreshVasp:
    """ASE's Vasp with a given ISTART; collects the SCF count of every call."""

    def __init__(self, directory: Path, istart: int):
        from ase.calculators.vasp import Vasp

        self.calc = Vasp(directory=str(directory), command=MOCK_VASP, ibrion=-1, nsw=0, istart=istart,
                         lwave=istart > 0, **VASP)
        self.scf: list[int] = []

    def wrap(self):
        from ase.calculators.calculator import Calculator, all_changes

        outer = self

        class Counting(Calculator):
            implemented_properties = ["energy", "free_energy", "forces"]

            def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
                Calculator.calculate(self, atoms, properties, system_changes)
                work = self.atoms.copy()
                work.calc = outer.calc
                energy = work.get_potential_energy()
                outer.scf.append(outer.calc.get_number_of_iterations())
                self.results = {"energy": energy, "free_energy": energy,
                                "forces": work.get_forces(apply_constraint=False)}

        return Counting()


def run_one(method: str, interface: str, system, directory: Path, surrogate=None) -> dict:
    from finetuna_core.learner import OnlineLearner
    from finetuna_core.relax import relax, relax_parent_only
    from vasp_interactive import VaspInteractive

    started = time.perf_counter()
    atoms = system()
    if interface == "M3":
        parent = VaspInteractive(command=MOCK_VASP, directory=directory, txt=None, **VASP)
    else:
        fresh = FreshVasp(directory, istart=0 if interface == "M1" else 1)
        parent = fresh.wrap()
    try:
        if method == "learner":
            surrogate.reset()
            result = relax(atoms, OnlineLearner(parent, surrogate), fmax=0.03, steps=300)
        else:
            result = relax_parent_only(atoms, parent, fmax=0.03, optimizer=method, steps=300)
        scf = [s.scf_iterations for s in parent.steps] if interface == "M3" else fresh.scf
    finally:
        if interface == "M3":
            parent.close()
    return {"method": method, "interface": interface, "dft_calls": result.parent_calls, "scf_total": sum(scf),
            "scf_per_call": sum(scf) / max(1, len(scf)), "scf_first": scf[0] if scf else None,
            "energy": result.energy, "converged": result.converged, "seconds": time.perf_counter() - started}


def figure(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.common import RESULTS

    groups = sorted({(r["backend"], r["method"]) for r in rows})
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(groups) + 2), 3.5))
    for k, interface in enumerate(("M1", "M2", "M3")):
        values = [next((r["scf_vs_m1"] for r in rows if (r["backend"], r["method"]) == g
                        and r["interface"] == interface), float("nan")) for g in groups]
        ax.bar([i + 0.27 * k for i in range(len(groups))], values, 0.27, label=interface)
    ax.set_xticks([i + 0.27 for i in range(len(groups))])
    ax.set_xticklabels([f"{b}\n{m}" for b, m in groups], fontsize=7)
    ax.set_ylabel("total SCF steps / M1")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "scf_interfaces.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="GPAW with BFGS only")
    parser.add_argument("--no-gpaw", action="store_true")
    args = parser.parse_args(argv)
    prepare_environment()
    from finetuna_core.surrogates import make_surrogate

    surrogate = make_surrogate("sevennet")
    rows = []
    plans = [("model (EMT)", emt_system, {}, ("bfgs", "gpmin", "learner"))]
    if not args.no_gpaw:
        try:
            import gpaw  # noqa: F401

            plans.append(("GPAW", gpaw_system, {"backend": "gpaw", "backend_options": GPAW_SETTINGS},
                          ("bfgs",) if args.quick else ("bfgs", "gpmin", "learner")))
        except ImportError:
            print("GPAW not installed: skipping its rows (make gpaw)")
    for backend, system, settings, methods in plans:
        for method in methods:
            for interface in ("M1", "M2", "M3"):
                with tempfile.TemporaryDirectory() as tmp:
                    (Path(tmp) / "mock_vasp.json").write_text(json.dumps(settings))
                    row = run_one(method, interface, system, Path(tmp), surrogate)
                row["backend"] = backend
                rows.append(row)
                print(f"  {backend:12s} {method:8s} {interface}: {row['dft_calls']:3d} calls, "
                      f"{row['scf_total']:4d} SCF, {row['seconds']:.1f} s", flush=True)
    for row in rows:
        reference = next(r for r in rows if r["backend"] == row["backend"] and r["method"] == row["method"]
                         and r["interface"] == "M1")
        row["scf_vs_m1"] = row["scf_total"] / reference["scf_total"]
    print(table(rows, [("backend", "physics"), ("method", "method"), ("interface", "interface"),
                       ("dft_calls", "DFT calls"), ("scf_total", "SCF total"), ("scf_per_call", "SCF/call"),
                       ("scf_vs_m1", "SCF / M1"), ("seconds", "wall s")]))
    figure(rows)
    payload = {"quick": args.quick, "rows": rows, "vasp_parameters": VASP, "gpaw_settings": GPAW_SETTINGS,
               "systems": {"model (EMT)": "O on Cu(111) 2x2x3, 13 atoms", "GPAW": "H on Cu(111) 1x1x3, 4 atoms, "
                           "PW 250 eV, PBE, 2x2x1 k-points, Fermi-Dirac 0.1 eV"}}
    path = write_results("scf_interfaces", payload)
    print(f"written {path}")
    return payload


if __name__ == "__main__":
    main()
