"""Relaxation drivers: the online learner, and the baselines in the same API.

``relax`` runs an ASE optimizer on an :class:`OnlineLearner`, rebuilds the BFGS Hessian from the
parent points after every parent call (replaying their positions and constrained forces through
the BFGS update, so no curvature from an older surrogate survives), ends only on a parent-verified
point and honours a cap on parent calls. Baselines: the parent alone with BFGS, GPMin or FIRE;
VASP's own CG (``IBRION = 2``); warm start (surrogate alone, then parent + BFGS).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.optimize import BFGS, FIRE, GPMin

from .learner import OnlineLearner, constrained, fmax_of
from .surrogates.base import LabelledPoint, Surrogate

OPTIMIZERS = {"bfgs": BFGS, "fire": FIRE, "gpmin": GPMin}


@dataclass
class RelaxResult:
    """The outcome of one relaxation, comparable across methods."""

    method: str
    status: str  # "converged", "max-steps", "parent-budget", "time-cap"
    parent_calls: int  # DFT calls
    force_calls: int
    energy: float  # parent energy of the final point
    fmax: float  # parent fmax (free atoms) of the final point
    seconds: float
    atoms: Atoms | None = None
    scf_iterations: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "atoms"}
        data["converged"] = self.converged
        return data


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
        work = self.atoms.copy()
        work.calc = self.inner
        energy = float(work.get_potential_energy())
        forces = work.get_forces(apply_constraint=False)
        seconds = time.perf_counter() - started
        self.seconds += seconds
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
        if self.store is not None:
            self.store.add(LabelledPoint(self.atoms, energy, forces), "parent-only optimizer", seconds_parent=seconds)


def rebuild_bfgs_hessian(optimizer: BFGS, points: list[LabelledPoint]) -> None:
    """Start the BFGS Hessian afresh and replay the parent points through the update.

    Positions and *constrained* forces (as the optimizer sees them) are used, in the order the
    points were computed; the optimizer's reference point becomes the newest parent point.
    """
    if not points:
        return
    ndofs = 3 * len(points[0].atoms)
    # a fresh H0: ASE's BFGS updates the Hessian in place, and its first Hessian *is* H0
    optimizer.H0 = np.eye(ndofs) * getattr(optimizer, "alpha", 70.0)
    if hasattr(optimizer, "state"):
        optimizer.state = None
    else:  # older ASE
        optimizer.H = None
    previous = None
    for point in points:
        position = point.atoms.positions.ravel().copy()
        forces = constrained(point.atoms, np.asarray(point.forces)).ravel()
        if previous is None:
            optimizer.update(position, forces, position, forces)
        else:
            optimizer.update(position, forces, *previous)
        previous = (position, forces)
    optimizer.pos0, optimizer.forces0 = previous


def _scf_total(parent: Calculator) -> int | None:
    steps = getattr(parent, "steps", None)
    if steps is None:
        return None
    return int(sum(getattr(s, "scf_iterations", 0) for s in steps))


def relax(atoms: Atoms, learner: OnlineLearner, fmax: float = 0.03, optimizer: str | type = "bfgs",
          maxstep: float = 0.2, steps: int = 1000, max_parent_calls: int | None = None,
          rebuild_hessian: bool = True, trajectory: str | None = None, logfile: str | None = None,
          on_step=None) -> RelaxResult:
    """Relax ``atoms`` with the online learner; see the module docstring."""
    started = time.perf_counter()
    cls = OPTIMIZERS[optimizer.lower()] if isinstance(optimizer, str) else optimizer
    atoms.calc = learner
    kwargs = {"maxstep": maxstep} if cls in (BFGS, FIRE) else {}
    opt = cls(atoms, logfile=logfile, trajectory=trajectory, **kwargs)
    seen_events = learner._parent_events
    status = "max-steps"
    for converged in opt.irun(fmax=fmax, steps=steps):
        if learner._parent_events != seen_events:
            seen_events = learner._parent_events
            if rebuild_hessian and isinstance(opt, BFGS):
                rebuild_bfgs_hessian(opt, learner.parent_points)
        if on_step is not None:
            on_step(learner)
        last = learner.records[-1] if learner.records else None
        if converged and last is not None and last.source != "surrogate":
            status = "converged"
            break
        if converged:  # converged on surrogate forces: the policy lacks relax-only; verify now
            energy, forces, _ = learner._ask_parent(atoms)
            learner.parent_calls += 1
            learner._use_parent(atoms, energy, forces, "verify convergence", "parent", len(learner.records) + 1,
                                0.0, None, 0.0)
            learner.results = {"energy": energy, "free_energy": energy, "forces": forces}
            if fmax_of(atoms, forces) < fmax:
                status = "converged"
                break
            rebuild_bfgs_hessian(opt, learner.parent_points) if isinstance(opt, BFGS) else None
        if max_parent_calls is not None and learner.parent_call_count >= max_parent_calls:
            status = "parent-budget"
            break
    final = learner.parent_points[-1] if learner.parent_points else None
    return RelaxResult(
        method="online-learner",
        status=status,
        parent_calls=learner.parent_call_count,
        force_calls=len(learner.records),
        energy=final.energy if final else float("nan"),
        fmax=fmax_of(final.atoms, np.asarray(final.forces)) if final else float("nan"),
        seconds=time.perf_counter() - started,
        atoms=final.atoms.copy() if final else None,
        scf_iterations=_scf_total(learner.parent),
        extra={**learner.summary(), "optimizer_steps": opt.nsteps},
    )


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
        scf_iterations=_scf_total(parent),
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


def relax_vasp_cg(atoms: Atoms, directory: str, command: str | list[str], fmax: float = 0.03, nsw: int = 500,
                  potim: float = 0.5, **vasp_parameters: Any) -> RelaxResult:
    """VASP's own conjugate gradients (``IBRION = 2``, ``EDIFFG = -fmax``) through ASE's ``Vasp``."""
    from ase.calculators.vasp import Vasp
    from ase.io import read

    started = time.perf_counter()
    parameters = {"xc": "PBE", "kpts": (1, 1, 1)}
    parameters.update(vasp_parameters)
    command_text = command if isinstance(command, str) else " ".join(command)
    calc = Vasp(directory=directory, command=command_text, ibrion=2, nsw=nsw, ediffg=-fmax, potim=potim,
                **parameters)
    work = atoms.copy()
    work.calc = calc
    work.get_potential_energy()
    frames = read(f"{directory}/OUTCAR", format="vasp-out", index=":")
    final = frames[-1]
    with open(f"{directory}/OSZICAR") as handle:
        scf_total = sum(1 for line in handle if line[:4] in ("DAV:", "RMM:"))
    resort = calc.resort
    forces = final.get_forces(apply_constraint=False)[resort]
    relaxed = atoms.copy()
    relaxed.positions = final.positions[resort]
    parent_fmax = fmax_of(relaxed, forces)
    return RelaxResult(
        method="vasp-cg",
        status="converged" if parent_fmax < fmax else "max-steps",
        parent_calls=len(frames),
        force_calls=len(frames),
        energy=float(final.get_potential_energy()),
        fmax=parent_fmax,
        seconds=time.perf_counter() - started,
        atoms=relaxed,
        scf_iterations=scf_total,
    )
