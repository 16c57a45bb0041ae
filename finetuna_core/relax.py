"""Relaxation drivers: the online learner (the baselines, in the same API, are in
:mod:`finetuna_core.baselines` and importable from here too).

``relax`` runs an ASE optimizer on an :class:`OnlineLearner`, rebuilds the BFGS Hessian from the
parent points after every parent call (replaying their positions and constrained forces through
the BFGS update, so no curvature from an older surrogate survives), ends only on a parent-verified
point and honours a cap on parent calls. Its :class:`Guards` (on by default) reject segments that
went uphill on the parent and finish tighter than asked, so that a flat shoulder or a near-saddle
is not taken for a minimum. ``driver="segments"`` runs the trust-region segments driver
(:mod:`finetuna_core.trust_driver`) instead. :func:`learner_setup` names the default learner, the
segments learner and the paper's variants.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.optimize import BFGS, FIRE

from .baselines import (
    OPTIMIZERS,
    CountingCalculator,
    read_vasp_relaxation,
    relax_parent_only,
    relax_vasp_cg,
    relax_warm_start,
)
from .correction import CorrectionSettings
from .hessian import curvature_is_positive, rebuild_bfgs_hessian
from .learner import LearnerSettings, OnlineLearner, largest_move, point_fmax, rejection_counter
from .query import AnyRule, PolicyName, make_policy
from .result import RelaxResult, RelaxStatus, best_converged, scf_total
from .surrogates.base import LabelledPoint
from .trust import TrustRegion
from .trust_driver import TrustDriverSettings, relax_trust_region, solve_segment

__all__ = ["OPTIMIZERS", "PAPER_DRIVER", "PAPER_SETTINGS", "SEGMENTS_SETTINGS", "START_MATCH_SETTINGS",
           "CountingCalculator", "Driver",
           "Guards", "LearnerSetup", "RelaxResult", "RelaxStatus", "curvature_is_positive", "learner_setup",
           "read_vasp_relaxation", "rebuild_bfgs_hessian", "relax", "relax_parent_only", "relax_vasp_cg",
           "relax_warm_start"]

# "optimizer": an ASE optimizer on the learner (the default's and the paper's); "segments": the
# trust-region segments driver (finetuna_core.trust_driver)
Driver = Literal["optimizer", "segments"]

# the paper's learner: the refit surrogate alone (no start match), fitted on forces
PAPER_SETTINGS = LearnerSettings(correction=CorrectionSettings(kind="none"), fit="forces", energy_weight=0.0)
# the default's earlier trust rule (a 2 meV noise band): the start-match and segments learners keep
# it, as they were measured with it
PREVIOUS_TRUST_RULE = TrustRegion(energy_noise=2e-3)
# the default without the checked local GP and without energy rows (the default until 2026-12-06)
START_MATCH_SETTINGS = LearnerSettings(correction=CorrectionSettings(kind="start-match"), energy_weight=0.0,
                                       trust_region=PREVIOUS_TRUST_RULE)
# the segments learner: the start match plus the local GP, the refit fitting force changes
# not-better rejections cost the segments driver calls (CO/Cu(111) 41 -> 50): its probes judge the end
SEGMENTS_SETTINGS = LearnerSettings(correction=CorrectionSettings(kind="local-gp"), fit="changes",
                                    trust_region=replace(PREVIOUS_TRUST_RULE, reject_worse_forces=False),
                                    energy_weight=0.0)


@dataclass(frozen=True)
class Guards:
    """The default driver's checks on top of the optimizer (``PAPER_DRIVER`` switches them off).

    * ``reject_uphill``: a parent point the learner's trust rule rejects (more than the uphill
      tolerance above the segment's start, or above it at all with a larger parent fmax; see
      :mod:`finetuna_core.trust`) is abandoned: the optimizer goes back to the start, with the
      Hessian rebuilt from every parent point (the rejected one included), and the learner's trust
      radius shrinks;
    * ``tight_finish``: a run does not end on the first parent point below ``fmax``. Points with
      parent forces of 0.01-0.03 eV/A are often not minima: a flat shoulder, or a near-symmetric
      saddle where BFGS on the parent would have drifted off. From there the learner relaxes on
      to ``finish_fmax_ratio`` x fmax (surrogate steps, parent checks), for at most
      ``finish_parent_calls`` more parent calls, and stops early once ``finish_patience`` finishing
      calls in a row lowered the best parent energy by less than ``finish_min_gain`` in all (a
      real minimum: nothing left to slide down to); the answer is the lowest parent point below
      ``fmax``. If the finish instead found a parent point ``reopen_margin`` lower than that answer
      but not yet below ``fmax`` (the converged point sat on a shoulder the finish slid down), the
      relaxation goes on from there as before the finish, up to ``finish_reopen_limit`` times;
    * ``finish_probe_gain``: during the finish, every accepted parent point below ``fmax`` is
      first put to the model (forces exact there): relaxed from it to fmax/3 within
      ``finish_probe_radius`` (or the trust radius, if larger), without the parent. If the model
      reaches fmax/3 inside that radius less than ``finish_probe_gain`` lower, the point is the
      answer and the run ends (unless the finish has found lower unconverged ground, see above);
      otherwise (more gain, the radius reached, or the model's descent stalled) the finish goes on
      as before. A point on a shoulder or near a saddle shows the model lower ground, a
      minimum does not, and the parent call that confirmed a minimum is saved. 0 switches it off;
    * ``tight_model_target``: the optimizer relaxes the model to the finish's threshold
      (``finish_fmax_ratio`` x fmax) from the start, not to ``fmax`` first, so the parent only
      ever verifies a point the model calls relaxed to fmax/3. The finishing phase begins at the
      first accepted parent point below ``fmax`` (a point below fmax/3 ends the run at once):
      the first verification can then be the finish too, where relaxing the model to ``fmax``
      first and to fmax/3 after cost a parent call more whenever the model was right (EMT set:
      233 -> 212 calls; OC20 and generated sets even);
    * ``step_within_radius``: before every step the optimizer's step limit (BFGS/FIRE
      ``maxstep``) is set to what is left of the trust radius around the segment's start, so that
      no surrogate step leaves it: a shrunk radius really shortens the next segment. Without it a
      0.2 A step after a rejection lands where the rejected point did and is rejected again;
    * ``progress_patience``: when that many parent calls in a row (outside the finish) lowered the
      best parent energy by less than ``progress_min_gain`` in all, the BFGS Hessian starts afresh
      at the current point (only the points from there on are replayed). A Hessian built from many
      short, noisy pairs can steer every step along soft directions that carry almost no force,
      while the stiff atom that carries the largest force barely moves: the run then shuttles
      between two points within the uphill tolerance until its budget is spent. Off (0) by
      default: the replay's curvature check (:func:`curvature_is_positive`) already removes the
      pairs that caused that, and on the benchmarks the restart fired on slow but real descent
      (OC20 random1979576: 10 restarts, 40 -> 88 parent calls) without making any run accurate
      that was not already.
    """

    reject_uphill: bool = True
    tight_finish: bool = True
    step_within_radius: bool = True
    finish_fmax_ratio: float = 1.0 / 3.0
    finish_parent_calls: int = 10
    finish_patience: int = 3
    finish_min_gain: float = 1e-3  # eV
    finish_reopen_limit: int = 2
    reopen_margin: float = 5e-3  # eV
    finish_probe_gain: float = 1e-3  # eV
    finish_probe_radius: float = 0.3  # Angstrom
    progress_patience: int = 0
    progress_min_gain: float = 1e-3  # eV
    tight_model_target: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.finish_fmax_ratio <= 1:
            raise ValueError(f"finish_fmax_ratio must be in (0, 1], got {self.finish_fmax_ratio}")
        if self.finish_parent_calls < 0:
            raise ValueError(f"finish_parent_calls must be >= 0, got {self.finish_parent_calls}")
        if self.finish_patience < 0 or self.finish_min_gain < 0:
            raise ValueError("finish_patience and finish_min_gain must be >= 0")
        if self.finish_probe_gain < 0 or self.finish_probe_radius <= 0:
            raise ValueError("finish_probe_gain must be >= 0 and finish_probe_radius > 0")
        if self.finish_reopen_limit < 0 or self.reopen_margin < 0:
            raise ValueError("finish_reopen_limit and reopen_margin must be >= 0")
        if self.progress_patience < 0 or self.progress_min_gain < 0:
            raise ValueError("progress_patience and progress_min_gain must be >= 0")


PAPER_DRIVER = Guards(reject_uphill=False, tight_finish=False, step_within_radius=False, progress_patience=0,
                      tight_model_target=False)


@dataclass(frozen=True)
class LearnerSetup:
    """Everything that makes one named learner variant: query policy, learner knobs, driver and its guards."""

    policy: AnyRule
    settings: LearnerSettings
    guards: Guards
    driver: Driver = "optimizer"


def learner_setup(query: Literal["default", "start-match", "segments"] | PolicyName = "default", fmax: float = 0.03,
                  **policy_options: Any) -> LearnerSetup:
    """The default learner (``"default"`` or ``"trust-region"``), the segments learner or one of the paper's.

    The default: adaptive trust region with a stall guard, forces matched at each segment's start
    plus a local GP while it predicts the parent better than the match alone, a refit on parent
    forces and energy differences, uphill segments rejected, a tight finish. ``"start-match"``: the
    same without the GP and with a refit on forces only (the default until 2026-12-06).
    ``"segments"``: the trust-region segments driver on the start-matched, GP-corrected model
    (fewer parent calls, less accurate on floppy systems; see the README). The paper's
    ``"relax-only"``, ``"k-steps"`` and ``"uncertainty"`` run as published: no force matching, no
    guards, a refit on forces. Pass the setup's ``guards`` and ``driver`` to :func:`relax`.
    """
    trust_region_learners = {"default": LearnerSettings(), "trust-region": LearnerSettings(),
                             "start-match": START_MATCH_SETTINGS, "segments": SEGMENTS_SETTINGS}
    if query in trust_region_learners:
        return LearnerSetup(make_policy("trust-region", fmax=fmax, **policy_options), trust_region_learners[query],
                            Guards(), "segments" if query == "segments" else "optimizer")
    return LearnerSetup(make_policy(query, fmax=fmax, **policy_options), PAPER_SETTINGS, PAPER_DRIVER)


def _replay_order(learner: OnlineLearner, point: LabelledPoint, hessian_from: int = 0) -> list[LabelledPoint]:
    """The parent points a BFGS Hessian is rebuilt from, ``point`` last (from index ``hessian_from`` on)."""
    return [p for p in learner.parent_points[hessian_from:] if p is not point] + [point]


def _resume_from(atoms: Atoms, optimizer, learner: OnlineLearner, point: LabelledPoint | None,
                 rebuild_hessian: bool = True, hessian_from: int = 0) -> None:
    """Put the optimizer on ``point`` with its Hessian rebuilt from the parent points (``point`` last).

    Only the points from index ``hessian_from`` on are replayed (a restarted Hessian).
    """
    if point is None:
        return
    if not np.array_equal(atoms.positions, point.atoms.positions):
        atoms.set_positions(point.atoms.positions, apply_constraint=False)
        if getattr(optimizer, "v", None) is not None:  # FIRE: momentum from a rejected segment is void
            optimizer.v = None
    if rebuild_hessian and isinstance(optimizer, BFGS):
        rebuild_bfgs_hessian(optimizer, _replay_order(learner, point, hessian_from))


def _step_limit(atoms: Atoms, learner: OnlineLearner, maxstep: float) -> float:
    """The next step's limit: what is left of the trust radius (at least a tenth of it).

    Every free atom then stays inside the radius around the segment's start, and the trust rule
    asks the parent near the boundary; a point beyond it is never computed.
    """
    start = learner.segment_start
    radius = learner.trust_radius
    if start is None:
        return min(maxstep, radius)
    left = radius - largest_move(atoms, start.atoms)
    return float(min(maxstep, max(left, 0.1 * radius)))


def _gain_of_last(points: list[LabelledPoint], patience: int, first: int = 0) -> float:
    """How much the last ``patience`` points lowered the best energy of ``points[first:]`` before them."""
    recent = points[first:]
    return min(p.energy for p in recent[: len(recent) - patience]) - min(p.energy for p in recent)


def finish_stalled(points: list[LabelledPoint], finish_from: int, guards: Guards) -> bool:
    """The last ``finish_patience`` finishing calls lowered the best parent energy by less than the gain."""
    patience = guards.finish_patience
    if patience <= 0 or len(points) - finish_from < patience:
        return False
    return _gain_of_last(points, patience) < guards.finish_min_gain


def progress_stalled(points: list[LabelledPoint], since: int, guards: Guards) -> bool:
    """The last ``progress_patience`` parent points (from index ``since`` on) lowered the best energy too little."""
    patience = guards.progress_patience
    if patience <= 0 or len(points) - since <= patience:
        return False
    return _gain_of_last(points, patience, first=since) < guards.progress_min_gain


def found_lower_ground(points: list[LabelledPoint], fmax: float, guards: Guards) -> bool:
    """The lowest parent point is not converged and lies ``reopen_margin`` below the best converged one."""
    if not points:
        return False
    lowest = min(points, key=lambda p: p.energy)
    if point_fmax(lowest) < fmax:
        return False
    best = best_converged(points, fmax)
    return best is None or lowest.energy < best.energy - guards.reopen_margin


# the finish probe's model solve: patient, since on a flat shoulder the model's energy falls slowly
PROBE_SETTINGS = TrustDriverSettings(stall_steps=50)


def model_sees_no_lower_ground(learner: OnlineLearner, fmax: float, guards: Guards,
                               hessian_from: int = 0) -> tuple[bool, int]:
    """The finish's probe (``Guards.finish_probe_gain``) from the segment's start, a converged parent point.

    Returns whether the model, relaxed from there (BFGS, its Hessian from the parent points), reached
    ``finish_fmax_ratio`` x ``fmax`` inside the probe radius less than the probe's gain lower, and the
    model steps that took. A probe that ended otherwise (on the radius, or stalled: on a flat
    shoulder the model's energy falls by less than the stall gain per step) says nothing: the
    finish goes on.
    """
    start = learner.segment_start
    radius = max(guards.finish_probe_radius, learner.trust_radius)
    probe = solve_segment(learner, start, radius, fmax * guards.finish_fmax_ratio, PROBE_SETTINGS,
                          _replay_order(learner, start, hessian_from))
    return probe.reason == "model minimum" and probe.predicted_drop < guards.finish_probe_gain, probe.steps


def relax(atoms: Atoms, learner: OnlineLearner, fmax: float = 0.03, optimizer: str | type = "bfgs",
          maxstep: float = 0.2, steps: int = 1000, max_parent_calls: int | None = None,
          rebuild_hessian: bool = True, trajectory: str | None = None, logfile: str | None = None,
          on_step=None, guards: Guards | None = None, driver: Driver = "optimizer",
          segments: TrustDriverSettings | None = None) -> RelaxResult:
    """Relax ``atoms`` with the online learner; see the module docstring and :class:`Guards`.

    ``steps`` caps the optimizer's steps (surrogate and parent calls together). The result is the
    lowest parent point with parent fmax below ``fmax`` (else the lowest parent point); its
    ``extra["guards"]`` counts how often each guard fired. ``driver="segments"`` hands the run to
    :func:`~finetuna_core.trust_driver.relax_trust_region` (with ``segments`` as its settings;
    ``steps`` then caps the model steps of all segments, and optimizer, maxstep, rebuild_hessian,
    logfile and guards do not apply).
    """
    if driver == "segments":
        return relax_trust_region(atoms, learner, fmax=fmax, max_parent_calls=max_parent_calls, steps=steps,
                                  settings=segments, trajectory=trajectory, on_step=on_step)
    if driver != "optimizer":
        raise ValueError(f"unknown driver {driver!r}: choose 'optimizer' or 'segments'")
    guards = guards or Guards()
    started = time.perf_counter()
    cls = OPTIMIZERS[optimizer.lower()] if isinstance(optimizer, str) else optimizer
    atoms.calc = learner
    kwargs = {"maxstep": maxstep} if cls in (BFGS, FIRE) else {}
    opt = cls(atoms, logfile=logfile, trajectory=trajectory, **kwargs)
    seen_events = learner.parent_events
    status: RelaxStatus = "max-steps"
    fired = {"rejected_uphill": 0, "rejected_not_better": 0, "finish_phase": 0, "finish_parent_calls": 0,
             "finish_probe_accepted": 0, "finish_probe_declined": 0, "verify_convergence": 0, "hessian_restart": 0,
             "finish_reopened": 0}
    probe_steps, probe_seconds = 0, 0.0  # the finish probe's model steps and their time
    finish_calls_before = 0  # finishing calls of earlier (reopened) finishing phases
    # the model relaxed to the finish's threshold from the start (Guards.tight_model_target)
    early_finish = guards.tight_finish and guards.tight_model_target and guards.finish_fmax_ratio < 1
    first_target = fmax * guards.finish_fmax_ratio if early_finish else fmax
    first_verify_fmax = first_target if early_finish else None  # relax-only's own fmax otherwise
    target = first_target
    finish_from: int | None = None  # parent points when the finishing phase began
    hessian_from = 0  # parent points before this index are no longer replayed into the Hessian
    learner.verify_fmax = first_verify_fmax
    try:
        while status == "max-steps" and opt.nsteps < steps:
            restart = False  # ASE's irun ends once it has seen converged forces: start it anew to go on
            for converged in opt.irun(fmax=target, steps=steps - opt.nsteps):
                last = learner.records[-1] if learner.records else None
                new_point = learner.parent_events != seen_events
                if new_point:
                    seen_events = learner.parent_events
                    if (guards.reject_uphill and last is not None and last.source == "parent"
                            and last.extra.get("trust_verdict") == "rejected"):
                        fired[rejection_counter(last.extra)] += 1
                        _resume_from(atoms, opt, learner, learner.reject_newest(), rebuild_hessian, hessian_from)
                        restart = True
                    else:
                        points = learner.parent_points
                        if finish_from is None and progress_stalled(points, hessian_from, guards):
                            fired["hessian_restart"] += 1
                            hessian_from = len(points) - 1
                        _resume_from(atoms, opt, learner, learner.point_at(atoms), rebuild_hessian, hessian_from)
                        if (early_finish and finish_from is None and last is not None and last.source == "parent"
                                and point_fmax(points[-1]) < fmax):  # the first converged point: finish from here
                            fired["finish_phase"] = 1
                            finish_from = learner.parent_call_count
                if guards.step_within_radius and hasattr(opt, "maxstep"):
                    opt.maxstep = _step_limit(atoms, learner, maxstep)
                if on_step is not None:
                    on_step(learner)
                if max_parent_calls is not None and learner.parent_call_count >= max_parent_calls:
                    status = "parent-budget"
                    break
                if finish_from is not None:
                    finishing = learner.parent_call_count - finish_from
                    fired["finish_parent_calls"] = finish_calls_before + finishing
                    if (new_point and guards.finish_probe_gain > 0 and last is not None and last.source == "parent"
                            and last.extra.get("trust_verdict") != "rejected"
                            and fmax * guards.finish_fmax_ratio <= point_fmax(learner.segment_start) < fmax
                            and not found_lower_ground(learner.parent_points, fmax, guards)):
                        probe_started = time.perf_counter()
                        confirmed, steps_taken = model_sees_no_lower_ground(learner, fmax, guards, hessian_from)
                        probe_seconds += time.perf_counter() - probe_started
                        probe_steps += steps_taken
                        fired["finish_probe_accepted" if confirmed else "finish_probe_declined"] += 1
                        if confirmed:
                            status = "converged"
                            break
                    if (finishing >= guards.finish_parent_calls
                            or (new_point and finish_stalled(learner.parent_points, finish_from, guards))):
                        if (fired["finish_reopened"] < guards.finish_reopen_limit
                                and found_lower_ground(learner.parent_points, fmax, guards)):
                            # the "minimum" was a shoulder: relax on from here as at the start
                            fired["finish_reopened"] += 1
                            finish_calls_before += finishing
                            finish_from, target = None, first_target
                            learner.verify_fmax = first_verify_fmax
                            restart = True
                            break
                        status = "converged"
                        break
                if restart:
                    break
                if converged and last is not None and last.source != "surrogate":
                    if guards.tight_finish and finish_from is None and guards.finish_fmax_ratio < 1:
                        fired["finish_phase"] = 1
                        finish_from = learner.parent_call_count
                        target = fmax * guards.finish_fmax_ratio
                        learner.verify_fmax = target
                        restart = True
                        break
                    status = "converged"
                    break
                if converged:  # converged on surrogate forces: the policy lacks relax-only; verify now
                    fired["verify_convergence"] += 1
                    learner.ask_parent(atoms, "verify convergence")
                    restart = True  # irun saw converged forces; its next round reads the parent's
                    break
            if not restart:
                break
    finally:
        learner.verify_fmax = None
    points = learner.parent_points
    final = best_converged(points, fmax)
    if final is None:
        status = "max-steps" if status == "converged" else status
        final = min(points, key=lambda p: p.energy) if points else None
    elif finish_from is not None:
        status = "converged"  # the finishing phase only ever improves on a converged point
    return RelaxResult(
        method="online-learner",
        status=status,
        parent_calls=learner.parent_call_count,
        force_calls=len(learner.records),
        energy=final.energy if final else float("nan"),
        fmax=point_fmax(final) if final else float("nan"),
        seconds=time.perf_counter() - started,
        atoms=final.atoms.copy() if final else None,
        scf_iterations=scf_total(learner.parent),
        extra={**learner.summary(), "optimizer_steps": opt.nsteps, "probe_model_steps": probe_steps,
               "seconds_probe": probe_seconds, "guards": fired},
    )
