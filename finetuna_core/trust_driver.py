"""The segments driver: trust-region segments on the learner's model, one parent call each.

One iteration, from the segment's start (the newest accepted parent point):

1. **Solve the model in the region.** BFGS on the learner's model (:meth:`OnlineLearner.predict`:
   the refit surrogate, force-matched at the start and corrected near the other parent points),
   its Hessian seeded from the parent points, every free atom kept within the trust radius of its
   start position (a step that leaves the region is projected back onto it). The segment ends at
   the model's minimum, at the minimum on the region's boundary (no force left but outward), when
   the model's energy stops falling, or after ``segment_steps``.
2. **One parent call** at the segment's end. The learner updates the radius from the ratio of the
   parent's energy change to the model's, refits, and the point becomes the new start, unless the
   parent's energy rose: then the segment is rejected and the start stays, with a smaller radius.
3. **Finish.** A start whose parent fmax is below ``fmax`` is the answer once the model, minimised
   from there to ``probe_ratio * fmax`` within ``probe_radius``, promises less than ``probe_gain``:
   forces just under the threshold are often not a minimum (a flat shoulder, a near-saddle), and
   the model, exact in forces there, says whether it sees lower ground. If it does, the parent
   computes the model's point; the relaxation goes on from there if that is ``finish_gain`` lower,
   else it ends on the converged point.

The parent is never asked where the model has not been minimised, every point the optimizer
moves to is inside the region the parent has vouched for, and the answer is always a parent point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.optimize import BFGS

from .hessian import rebuild_bfgs_hessian
from .learner import OnlineLearner, constrained, largest_move, point_fmax, rejection_counter
from .result import RelaxResult, RelaxStatus, best_converged, scf_total
from .surrogates.base import LabelledPoint, free_atom_mask

Boundary = Literal["slide", "stop"]


@dataclass(frozen=True)
class TrustDriverSettings:
    """Knobs of the trust-region driver (see the module docstring)."""

    # at the region's boundary a segment slides along it to the model's lowest point there
    # ("slide"), or ends where its path first reached it ("stop": the model's descent path only)
    boundary: Boundary = "slide"
    segment_steps: int = 300  # model steps per segment
    stall_steps: int = 10  # a segment ends after this many model steps without ...
    stall_gain: float = 2e-4  # ... lowering the model's energy by this much (eV)
    probe_ratio: float = 1.0 / 3.0  # the finish probe minimises the model to probe_ratio * fmax
    probe_radius: float = 0.3  # Angstrom
    probe_gain: float = 1e-3  # eV: a converged start is the answer when the model promises less
    finish_gain: float = 1e-3  # eV: a finishing parent call must find at least this much lower ground

    def __post_init__(self) -> None:
        if self.boundary not in ("slide", "stop"):
            raise ValueError(f"boundary must be 'slide' or 'stop', got {self.boundary!r}")
        if self.segment_steps < 1 or self.stall_steps < 1:
            raise ValueError("segment_steps and stall_steps must be >= 1")
        if not 0 < self.probe_ratio <= 1:
            raise ValueError(f"probe_ratio must be in (0, 1], got {self.probe_ratio}")
        if self.probe_radius <= 0 or min(self.stall_gain, self.probe_gain, self.finish_gain) < 0:
            raise ValueError("probe_radius must be > 0 and the gains >= 0")


@dataclass(frozen=True)
class Segment:
    """Where one model solve ended and why."""

    atoms: Atoms
    reason: str  # "model minimum", "region boundary", "model stalled", "step cap"
    steps: int
    predicted_drop: float  # model energy at the start minus at the end (eV)


def region_fmax(atoms: Atoms, forces: np.ndarray, start: Atoms, radius: float, free: np.ndarray) -> float:
    """Largest force left once, on atoms at the region's boundary, the outward part is removed."""
    left = constrained(atoms, forces)
    moved = atoms.positions - start.positions
    distance = np.linalg.norm(moved, axis=1)
    edge = free & (distance > 0.999 * radius)
    if edge.any():
        outward = moved[edge] / distance[edge][:, None]
        push = np.clip((left[edge] * outward).sum(axis=1), 0.0, None)
        left[edge] -= push[:, None] * outward
    return float(np.sqrt((left[free] ** 2).sum(axis=1)).max(initial=0.0))


def project_into(atoms: Atoms, start: Atoms, radius: float, free: np.ndarray) -> bool:
    """Move every free atom farther than ``radius`` from its start position back onto that sphere.

    Returns whether any atom was moved.
    """
    moved = atoms.positions - start.positions
    distance = np.linalg.norm(moved, axis=1)
    over = free & (distance > radius)
    if over.any():
        moved[over] *= (radius / distance[over])[:, None]
        atoms.set_positions(start.positions + moved, apply_constraint=False)
    return bool(over.any())


class RegionBFGS(BFGS):
    """ASE's BFGS whose every step is projected back into the trust region around ``start``."""

    def __init__(self, atoms: Atoms, start: Atoms, radius: float, **kwargs: Any):
        super().__init__(atoms, **kwargs)
        self.region_atoms = atoms
        self.region_start = start
        self.region_radius = radius
        self.region_free = free_atom_mask(start)
        self.projected = False  # whether the last step was projected back onto the boundary

    def step(self, forces=None):
        super().step(forces)
        self.projected = project_into(self.region_atoms, self.region_start, self.region_radius, self.region_free)


def solve_segment(learner: OnlineLearner, start: LabelledPoint, radius: float, fmax: float,
                  settings: TrustDriverSettings, hessian_points: list[LabelledPoint] | None) -> Segment:
    """Minimise the learner's model from ``start`` inside ``radius`` (see the module docstring)."""
    work = start.atoms.copy()
    model = learner.model_calculator()
    work.calc = model
    free = free_atom_mask(work)
    optimizer = RegionBFGS(work, start.atoms, radius, logfile=None, maxstep=min(0.2, radius))
    if hessian_points:
        rebuild_bfgs_hessian(optimizer, hessian_points)
    first = best = work.get_potential_energy()
    best_positions = work.positions.copy()
    lowest_force = float("inf")
    reason, quiet = "step cap", 0
    for converged in optimizer.irun(fmax=fmax, steps=settings.segment_steps):
        energy = work.get_potential_energy()
        force = region_fmax(work, work.get_forces(apply_constraint=False), start.atoms, radius, free)
        # progress is lower energy or clearly smaller forces: near a minimum the energy changes less
        # than the surrogate's float32 resolution, while its forces still say where to go
        progress = energy < best - settings.stall_gain or force < 0.9 * lowest_force
        quiet = 0 if progress else quiet + 1
        lowest_force = min(lowest_force, force)
        if energy < best:
            best, best_positions = energy, work.positions.copy()
        ended = converged or force < fmax or (settings.boundary == "stop" and optimizer.projected)
        if ended:  # the segment ends here, whatever the energy's last digits say
            best, best_positions = min(best, energy), work.positions.copy()
            on_edge = largest_move(work, start.atoms) > 0.999 * radius
            reason = "region boundary" if on_edge and not converged else "model minimum"
            break
        if quiet >= settings.stall_steps:
            reason = "model stalled"
            break
    end = start.atoms.copy()
    end.set_positions(best_positions, apply_constraint=False)
    return Segment(end, reason, model.calls, first - best)


def relax_trust_region(atoms: Atoms, learner: OnlineLearner, fmax: float = 0.03, max_parent_calls: int | None = None,
                       steps: int = 20000, settings: TrustDriverSettings | None = None, trajectory: str | None = None,
                       on_step=None) -> RelaxResult:
    """Relax ``atoms`` with the trust-region driver; the answer is the lowest parent point below ``fmax``.

    A learner with parent points already (a resumed run) continues from its segment start.
    ``steps`` caps the model steps of all segments together; ``on_step(learner)`` is called after
    every parent point (a rejected one already undone); ``trajectory`` receives every accepted
    parent point.
    """
    settings = settings or TrustDriverSettings()
    started = time.perf_counter()
    fired = {"rejected_uphill": 0, "rejected_not_better": 0, "probe_accepted": 0, "probe_declined": 0,
             "finish_parent_calls": 0, "segment_ends": {}}
    writer = None
    if trajectory is not None:
        from ase.io import Trajectory

        writer = Trajectory(trajectory, "a")
    model_steps = 0
    seconds = {"segments": 0.0, "probe": 0.0}  # model solves: segments and finish probes
    status: RelaxStatus = "parent-budget"

    def accepted(new_start: bool) -> None:
        """After a parent point: write the (new) start to the trajectory and tell the caller."""
        if writer is not None and new_start:
            start = learner.segment_start
            snapshot = start.atoms.copy()
            snapshot.calc = SinglePointCalculator(snapshot, energy=start.energy, forces=np.asarray(start.forces))
            writer.write(snapshot)
        if on_step is not None:
            on_step(learner)

    try:
        if learner.segment_start is None:
            learner.ask_parent(atoms.copy(), "initial point")
            accepted(True)
        finish_from: float | None = None  # energy of the converged start whose probe asked for more
        while True:
            if max_parent_calls is not None and learner.parent_call_count >= max_parent_calls:
                status = "parent-budget"
                break
            if model_steps >= steps:
                status = "max-steps"
                break
            start = learner.segment_start
            target, finishing = fmax, False
            if point_fmax(start) < fmax:
                clock = time.perf_counter()
                probe = solve_segment(learner, start, settings.probe_radius, fmax * settings.probe_ratio, settings,
                                      None)
                seconds["probe"] += time.perf_counter() - clock
                model_steps += probe.steps
                if probe.predicted_drop < settings.probe_gain:
                    fired["probe_accepted"] += 1
                    status = "converged"
                    break
                fired["probe_declined"] += 1
                finish_from, target, finishing = start.energy, fmax * settings.probe_ratio, True
            clock = time.perf_counter()
            hessian = [p for p in learner.parent_points if p is not start] + [start]
            segment = solve_segment(learner, start, learner.trust_radius, target, settings, hessian)
            if largest_move(segment.atoms, start.atoms) < 1e-8:
                # the parent curvature misled BFGS, or the model's forces fell just below the target
                # where the parent's are just above: plain steps to a tighter target
                target = target * settings.probe_ratio
                segment = solve_segment(learner, start, learner.trust_radius, target, settings, None)
            seconds["segments"] += time.perf_counter() - clock
            model_steps += segment.steps
            ends = fired["segment_ends"]
            ends[segment.reason] = ends.get(segment.reason, 0) + 1
            if largest_move(segment.atoms, start.atoms) < 1e-8:
                status = "stalled"
                break
            reason = (f"{'finish: ' if finishing else ''}{segment.reason} after {segment.steps} model steps "
                      f"(radius {learner.trust_radius:.3f} A, model promises {1000 * segment.predicted_drop:.1f} meV)")
            entry = learner.ask_parent(segment.atoms, reason)
            fired["finish_parent_calls"] += int(finishing)
            rejected = entry.extra.get("trust_verdict") == "rejected"
            if rejected:
                fired[rejection_counter(entry.extra)] += 1
                learner.reject_newest()
            accepted(not rejected)
            if finishing and learner.segment_start.energy > finish_from - settings.finish_gain:
                status = "converged"  # the parent did not confirm the lower ground the model saw
                break
    finally:
        if writer is not None:
            writer.close()
    points = learner.parent_points
    final = best_converged(points, fmax)
    if final is None:
        status = "max-steps" if status == "converged" else status
        final = min(points, key=lambda p: p.energy)
    return RelaxResult(
        method="online-learner",
        status=status,
        parent_calls=learner.parent_call_count,
        force_calls=learner.parent_call_count + model_steps,
        energy=final.energy,
        fmax=point_fmax(final),
        seconds=time.perf_counter() - started,
        atoms=final.atoms.copy(),
        scf_iterations=scf_total(learner.parent),
        extra={**learner.summary(), "model_steps": model_steps, "guards": fired,
               "seconds_segments": seconds["segments"], "seconds_probe": seconds["probe"]},
    )
