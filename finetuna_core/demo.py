"""The main job on embedded defaults: relax CO on Cu(111) three ways through the fake VASP.

1. ASE BFGS with ASE's standard ``Vasp`` calculator: a fresh (fake) VASP for every force call;
2. ASE BFGS with ``VaspInteractive``: one VASP process for the whole relaxation;
3. the online learner: SevenNet-0 (weights from the ``sevenn`` wheel) predicts, the interactive
   fake VASP is asked only when the surrogate says the structure is relaxed, and the surrogate is
   fine-tuned on every parent point while VASP is paused.

Everything runs offline on CPU. Run with ``python -m finetuna_core.demo [--out DIR]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

from .environment import apply_defaults


def build_system():
    """CO on top of a Cu atom of a 3x3x3 Cu(111) slab; the two lower layers fixed."""
    from ase.build import add_adsorbate, fcc111, molecule
    from ase.constraints import FixAtoms

    slab = fcc111("Cu", (3, 3, 3), vacuum=7.0)
    add_adsorbate(slab, molecule("CO"), 2.8, "ontop")
    slab.pbc = True
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag >= 2]))
    return slab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="keep the run directories here (default: a temporary one)")
    parser.add_argument("--fmax", type=float, default=0.03)
    args = parser.parse_args(argv)
    apply_defaults()
    warnings.filterwarnings("ignore", category=UserWarning)

    from ase.calculators.vasp import Vasp
    from ase.optimize import BFGS

    from finetuna_core.learner import OnlineLearner
    from finetuna_core.parents import fake_potcar_path, make_parent, mock_vasp_command
    from finetuna_core.relax import relax, relax_parent_only
    from finetuna_core.surrogates import make_surrogate

    os.environ.setdefault("VASP_PP_PATH", str(fake_potcar_path()))
    root = args.out or Path(tempfile.mkdtemp(prefix="finetuna-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    vasp = {"xc": "PBE", "encut": 350, "kpts": (2, 2, 1), "ismear": 1, "sigma": 0.2}
    print(f"CO on Cu(111), {len(build_system())} atoms; parent = fake VASP (EMT physics); runs in {root}\n")
    rows = []

    # 1. a fresh VASP per force call, through ASE's Vasp
    atoms = build_system()
    calc = Vasp(directory=str(root / "ase-vasp"), command=" ".join(mock_vasp_command()), ibrion=-1, nsw=0,
                istart=0, **vasp)
    atoms.calc = calc
    scf = []
    started = time.perf_counter()

    class Counting(BFGS):
        def log(self, forces=None):
            scf.append(calc.get_number_of_iterations())
            energy = atoms.get_potential_energy()
            print(f"  ASE Vasp  step {len(scf):3d}  E = {energy:12.6f} eV  SCF = {scf[-1]:3d}", flush=True)

    Counting(atoms, logfile=None).run(fmax=args.fmax, steps=300)
    rows.append(("BFGS, ASE Vasp (new VASP per step)", len(scf), sum(scf), atoms.get_potential_energy(),
                 time.perf_counter() - started))

    # 2. one interactive VASP for the whole relaxation
    parent = make_parent("mock", root / "interactive", vasp_parameters=vasp, txt="vasp.out")
    with parent:
        result = relax_parent_only(build_system(), parent, fmax=args.fmax)
    rows.append(("BFGS, VaspInteractive", result.parent_calls, result.scf_iterations, result.energy,
                 result.seconds))
    print(f"  VaspInteractive: {result.parent_calls} parent calls, {result.scf_iterations} SCF steps")

    # 3. the online learner
    print("\n  online learner (SevenNet-0 surrogate, fine-tuned on each parent point):", flush=True)
    surrogate = make_surrogate("sevennet")
    parent = make_parent("mock", root / "learner" / "vasp", vasp_parameters=vasp, txt="vasp.out")

    def progress(learner):
        record = learner.records[-1]
        mark = "PARENT" if record.source != "surrogate" else "      "
        print(f"    {mark} call {record.step:3d}  E = {record.energy:12.6f} eV  fmax = {record.fmax:7.4f}"
              + (f"  ({record.reason})" if record.reason else ""), flush=True)

    with parent:
        learner = OnlineLearner(parent, surrogate, directory=str(root / "learner"))
        learned = relax(build_system(), learner, fmax=args.fmax, on_step=progress)
    rows.append(("online learner + VaspInteractive", learned.parent_calls, learned.scf_iterations, learned.energy,
                 learned.seconds))

    print("\n{:38s} {:>12s} {:>10s} {:>14s} {:>9s}".format("method", "parent calls", "SCF steps", "final E (eV)",
                                                           "wall s"))
    for name, calls, scf_total, energy, seconds in rows:
        print(f"{name:38s} {calls:12d} {scf_total!s:>10s} {energy:14.6f} {seconds:9.1f}")
    finetune = [r.seconds for r in learner.finetune_reports]
    print(f"\nonline learner: {learned.status}, final parent fmax {learned.fmax:.4f} eV/A, "
          f"{len(finetune)} fine-tunes of median {sorted(finetune)[len(finetune) // 2]:.2f} s; "
          f"parent points in {root / 'learner' / 'parent.extxyz'}")
    return 0 if learned.converged else 1


if __name__ == "__main__":
    raise SystemExit(main())
