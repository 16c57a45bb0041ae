"""The baselines, in the learner's API: the parent alone with BFGS, GPMin or FIRE; VASP's own CG
(``IBRION = 2``); warm start (the surrogate alone, then the parent with BFGS).

Every baseline returns a :class:`~finetuna_core.result.RelaxResult` with its parent (DFT) calls
counted the way the learner's are, so :mod:`finetuna_core.metrics` can compare them call for call.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.optimize import BFGS, FIRE, GPMin

from .learner import fmax_of
from .parents import compute
from .result import RelaxResult, scf_total
from .surrogates.base import LabelledPoint, Surrogate

__all__ = ["OPTIMIZERS", "CountingCalculator", "read_vasp_relaxation", "relax_parent_only", "relax_vasp_cg",
           "relax_warm_start"]

OPTIMIZERS = {"bfgs": BFGS, "fire": FIRE, "gpmin": GPMin}


class CountingCalculator(Calculator):
    """Passes force calls to ``inner`` and counts them (a baseline's DFT calls).

    With a :class:`~finetuna_core.store.RunStore`, every point is saved as it is computed and a
    structure met before (a restarted, deterministic relaxation) is answered from the store.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, inner: Calculator, store=None):
        Calculator.__init__(self)
        self.inner = inner
        self.store = store
        self.calls = 0
        self.reused = 0
        self.seconds = 0.0

    def calculate(self, atoms=None, properties=("energy", "forces"), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        self.calls += 1
        stored = self.store.lookup(self.atoms) if self.store is not None else None
        if stored is not None:
            self.reused += 1
            energy = stored.point.energy
            self.results = {"energy": energy, "free_energy": energy, "forces": np.array(stored.point.forces)}
            return
        started = time.perf_counter()
        energy, forces = compute(self.inner, self.atoms)
        seconds = time.perf_counter() - started
        self.seconds += seconds
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
        if self.store is not None:
            self.store.add(LabelledPoint(self.atoms, energy, forces), "parent-only optimizer", seconds_parent=seconds)


def relax_parent_only(atoms: Atoms, parent: Calculator, fmax: float = 0.03, optimizer: str = "bfgs",
                      maxstep: float = 0.2, steps: int = 1000, store=None,
                      max_seconds: float | None = None) -> RelaxResult:
    """The parent alone with an ASE optimizer (``bfgs``, ``gpmin`` or ``fire``).

    ``store``: a RunStore that keeps every parent point (a rerun reuses them instead of recomputing).
    ``max_seconds``: stop after this much wall time (status ``"time-cap"``), e.g. for ASE's GPMin,
    which refits a Gaussian process over all points at every step.
    """
    started = time.perf_counter()
    counter = CountingCalculator(parent, store)
    atoms.calc = counter
    cls = OPTIMIZERS[optimizer]
    kwargs = {"maxstep": maxstep} if cls in (BFGS, FIRE) else {}
    opt = cls(atoms, logfile=None, **kwargs)
    status = "max-steps"
    for converged in opt.irun(fmax=fmax, steps=steps):
        if converged:
            status = "converged"
            break
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            status = "time-cap"
            break
    forces = counter.results["forces"]
    return RelaxResult(
        method=f"parent-{optimizer}",
        status=status,
        parent_calls=counter.calls,
        force_calls=counter.calls,
        energy=float(counter.results["energy"]),
        fmax=fmax_of(atoms, forces),
        seconds=time.perf_counter() - started,
        atoms=atoms.copy(),
        scf_iterations=scf_total(parent),
        extra={"reused_points": counter.reused},
    )


def relax_warm_start(atoms: Atoms, surrogate: Surrogate, parent: Calculator, fmax: float = 0.03,
                     maxstep: float = 0.2, steps: int = 1000) -> RelaxResult:
    """The pre-trained surrogate alone until converged, then the parent with BFGS."""
    started = time.perf_counter()
    atoms.calc = surrogate.as_ase_calculator()
    surrogate_opt = BFGS(atoms, logfile=None, maxstep=maxstep)
    surrogate_opt.run(fmax=fmax, steps=steps)
    result = relax_parent_only(atoms, parent, fmax=fmax, optimizer="bfgs", maxstep=maxstep, steps=steps)
    result.method = "warm-start"
    result.seconds = time.perf_counter() - started
    result.extra["surrogate_steps"] = surrogate_opt.nsteps + 1
    return result


def read_vasp_relaxation(directory: str | Path) -> tuple[int, Atoms, int]:
    """Ionic steps, the last ionic step's structure (VASP's order) and the SCF steps of a VASP relaxation.

    Steps and SCF steps are counted in OSZICAR; the structure, energy (sigma -> 0) and forces come
    from the project's OUTCAR parser, which also reads a trial step that put two atoms almost on top
    of each other: its forces of 10^6 eV/A fill their fixed-width fields and the columns run together
    (as real VASP's do), where ASE's parser raises on the whole file.
    """
    from vasp_interactive.errors import VaspOutputIncomplete
    from vasp_interactive.outputs import read_outcar
    from vasp_interactive.protocol import is_scf_line

    directory = Path(directory)
    with open(directory / "OSZICAR") as handle:
        lines = handle.readlines()
    steps = sum(1 for line in lines if " F=" in line)
    scf_steps = sum(1 for line in lines if is_scf_line(line))
    frames = read_outcar(directory / "OUTCAR")
    if not frames or frames[-1].info["step"] != steps:
        raise VaspOutputIncomplete(
            f"{directory}: OSZICAR has {steps} ionic steps but OUTCAR's last readable structure is step "
            f"{frames[-1].info['step'] if frames else 'none'}: the run was cut off while writing its last step. "
            "Rerun it", directory=str(directory))
    final = frames[-1]
    return steps, final, scf_steps


def relax_vasp_cg(atoms: Atoms, directory: str, command: str | list[str], fmax: float = 0.03, nsw: int = 500,
                  potim: float = 0.5, **vasp_parameters: Any) -> RelaxResult:
    """VASP's own conjugate gradients (``IBRION = 2``, ``EDIFFG = -fmax``) through ASE's ``Vasp``."""
    from ase.calculators.vasp import Vasp

    started = time.perf_counter()
    parameters = {"xc": "PBE", "kpts": (1, 1, 1)}
    parameters.update(vasp_parameters)
    command_text = command if isinstance(command, str) else " ".join(command)
    calc = Vasp(directory=directory, command=command_text, ibrion=2, nsw=nsw, ediffg=-fmax, potim=potim,
                **parameters)
    work = atoms.copy()
    work.calc = calc
    work.get_potential_energy()
    steps, final, scf_steps = read_vasp_relaxation(directory)
    resort = calc.resort
    forces = final.get_forces(apply_constraint=False)[resort]
    relaxed = atoms.copy()
    relaxed.positions = final.positions[resort]
    parent_fmax = fmax_of(relaxed, forces)
    return RelaxResult(
        method="vasp-cg",
        status="converged" if parent_fmax < fmax else "max-steps",
        parent_calls=steps,
        force_calls=steps,
        energy=float(final.get_potential_energy()),
        fmax=parent_fmax,
        seconds=time.perf_counter() - started,
        atoms=relaxed,
        scf_iterations=scf_steps,
    )
