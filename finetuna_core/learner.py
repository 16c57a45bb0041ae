"""``OnlineLearner``: an ASE calculator that predicts with a surrogate and asks the parent when needed.

At each force call the surrogate predicts; when the query policy distrusts the prediction, the
parent computes the point, the caller receives the parent's numbers, the point is stored on disk
at once and the surrogate is fine-tuned on all parent points before the next call. A parent that
can pause (``VaspInteractive``) is paused while the surrogate predicts and trains.

The learner keeps a trust region (:mod:`finetuna_core.trust`): the segment's start (the newest
accepted parent point) and a radius updated from parent energies after every parent point. What it
predicts is a *model* (:mod:`finetuna_core.correction`): the refit surrogate matched to the parent's
forces at the start, plus a short-range GP through the parent points near it; by default the GP
is applied only while it has predicted new parent points better than the match alone
(:class:`~finetuna_core.correction.GPCheck`). The segments learner applies it always and refits
on force *changes* relative to the start, the part the match leaves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from .correction import CorrectionSettings, GPCheck, ModelCorrection, ParentValues, SurrogateValues, near_enough
from .parents import PausableParent, ReportsScfTolerance, compute
from .query import AnyRule, QueryContext, make_policy
from .store import RunStore
from .surrogates.base import FineTuneReport, LabelledPoint, Prediction, Surrogate, free_atom_mask
from .trust import TrustRegion, TrustUpdate, update_radius

DEFAULT_TRUST_RADIUS = 0.5  # Angstrom: the fixed radius of the previous default, kept for named use

StepSource = Literal["surrogate", "parent", "stored"]
FitTarget = Literal["forces", "changes"]


@dataclass(frozen=True)
class LearnerSettings:
    """Knobs of the learner itself (the policy and the surrogate are passed separately)."""

    offset_window: int = 3  # parent points used to align surrogate energies to the parent's
    pause_parent: bool = True  # pause a parent that can pause while Python works
    # prepare the surrogate's fine-tuning data for a point (its Jacobian) in a thread while the
    # parent computes it: the parent's result is not needed for that part
    overlap_precompute: bool = True
    trust_region: TrustRegion = field(default_factory=TrustRegion)
    # what the optimizer sees (finetuna_core.correction): the refit surrogate matched to the parent's
    # forces at the segment's start ("start-match": the first-order consistency a trust-region model
    # needs), that plus a local GP through the nearby parent points ("local-gp", the segments
    # learner's), the GP only while it predicts new parent points better than the match alone
    # ("checked-gp", the default's), or the bare refit surrogate ("none", the paper's learner)
    correction: CorrectionSettings = field(default_factory=lambda: CorrectionSettings(kind="checked-gp"))
    # what the refit fits: forces, or force changes relative to the segment's start ("changes", the
    # segments learner's: the model's curvature, what the start match leaves; where the surrogate
    # can, else forces)
    fit: FitTarget = "forces"
    # with fit="forces", where the surrogate can: each parent point's energy relative to the newest
    # point's is fitted too, weighted this much against the point's forces (0: forces only). The
    # trust region judges segments by energy changes; this teaches the surrogate those it has seen.
    energy_weight: float = 0.3

    def __post_init__(self) -> None:
        if self.fit not in ("forces", "changes"):
            raise ValueError(f"fit must be 'forces' or 'changes', got {self.fit!r}")
        if self.offset_window < 1:
            raise ValueError("offset_window must be >= 1")
        if self.energy_weight < 0:
            raise ValueError(f"energy_weight must be >= 0, got {self.energy_weight}")


@dataclass
class StepRecord:
    step: int
    source: StepSource  # "stored": a parent point found on disk (a resumed run) or revisited
    energy: float
    fmax: float
    reason: str | None
    seconds_predict: float = 0.0
    seconds_parent: float = 0.0
    seconds_finetune: float = 0.0
    surrogate_fmax: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def rejection_counter(extra: dict[str, Any]) -> str:
    """The drivers' guard counter for a rejected parent point, from its record's ``extra``."""
    return "rejected_not_better" if extra.get("trust_rejection") == "not-better" else "rejected_uphill"


def constrained(atoms: Atoms, forces: np.ndarray) -> np.ndarray:
    """Forces as the optimizer sees them: every constraint's ``adjust_forces`` applied."""
    adjusted = np.array(forces, dtype=float, copy=True)
    for constraint in atoms.constraints:
        constraint.adjust_forces(atoms, adjusted)
    return adjusted


def fmax_of(atoms: Atoms, forces: np.ndarray) -> float:
    free = free_atom_mask(atoms)
    adjusted = constrained(atoms, forces)[free]
    return float(np.sqrt((adjusted**2).sum(axis=1)).max(initial=0.0))


def point_fmax(point: LabelledPoint) -> float:
    """Parent fmax of a point over its free atoms (constraints applied)."""
    return fmax_of(point.atoms, np.asarray(point.forces))


def _parent_values(point: LabelledPoint) -> ParentValues:
    return ParentValues(point.atoms.positions, point.energy, np.asarray(point.forces))


class ModelCalculator(Calculator):
    """ASE calculator on a learner's model (its :meth:`OnlineLearner.predict`); never calls the parent."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, learner: OnlineLearner):
        Calculator.__init__(self)
        self.learner = learner
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy", "forces"), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        self.calls += 1
        prediction = self.learner.predict(self.atoms)
        self.results = {"energy": prediction.energy, "free_energy": prediction.energy, "forces": prediction.forces}


def largest_move(a: Atoms, b: Atoms) -> float:
    """Largest displacement of a free atom between two structures of the same atoms (Angstrom)."""
    if len(a) != len(b):
        return float("inf")
    moved = np.linalg.norm(a.positions - b.positions, axis=1)[free_atom_mask(a)]
    return float(moved.max(initial=0.0))


class OnlineLearner(Calculator):
    """Surrogate + parent + query policy, behind ASE's calculator interface.

    Args:
        parent: the expensive calculator (``VaspInteractive``, EMT, ...).
        surrogate: a :class:`~finetuna_core.surrogates.base.Surrogate`.
        policy: a query rule (default: ``make_policy("trust-region")``: one initial parent point,
            relax-only at fmax 0.03, the adaptive trust radius and a stall guard).
        directory: where parent points and the step log are kept (None: in memory only). A learner
            created on a directory with parent points resumes from them without recomputing any,
            with the trust radius and the GP check's record its step log ends with.

    The drivers (:func:`finetuna_core.relax.relax`) use the public surface: :meth:`ask_parent`,
    :meth:`predict`, :meth:`model_calculator`, :attr:`parent_events`, :attr:`segment_start`,
    :attr:`trust_radius`, :meth:`reject_newest`, :meth:`point_at` and :attr:`parent_points`.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, parent: Calculator, surrogate: Surrogate, policy: AnyRule | None = None,
                 directory: str | None = None, settings: LearnerSettings | None = None):
        Calculator.__init__(self)
        self.parent = parent
        self.surrogate = surrogate
        self.policy = policy or make_policy()
        self.settings = settings or LearnerSettings()
        self.store = RunStore(directory)
        self.records: list[StepRecord] = []
        self.offset = 0.0
        self.finetune_reports: list[FineTuneReport] = []
        self.pause_reports: list = []
        self.precompute_seconds: list[float] = []
        self.trust_radius = self.settings.trust_region.initial
        self.verify_fmax: float | None = None  # set by a driver to tighten relax-only (its final phase)
        self.trust_updates: list[TrustUpdate] = []
        self.energy_noise: float | None = None  # the trust rule's noise band with this parent (trust_rule)
        self._steps_since_parent = 0
        self._parent_events = 0
        self._start_index: int | None = None  # the segment's start: the newest accepted parent point
        self._previous_start_index: int | None = None
        self._start_prediction: float | None = None  # surrogate energy there, from the current fit
        self._correction: ModelCorrection | None = None  # the model around the segment start
        self.gp_check = GPCheck(self.settings.correction.check_points)  # "checked-gp": GP vs match alone
        self._restored_points = len(self.store.points)  # parent points found on disk at start
        previous = self.store.steps()
        self._step_offset = int(max((entry.get("step", 0) for entry in previous), default=0))
        if self.store.points:
            self._restore_state(previous)
            energies = [stored.point.energy for stored in self.store.points]
            self._start_index = int(np.argmin(energies))
            self._train()

    def _restore_state(self, previous: list[dict[str, Any]]) -> None:
        """Take up a resumed run's trust radius and GP check from its step log (``previous``).

        Without them a resumed run would start again at the initial radius (a first segment longer
        than the run had found safe) and with the GP off until three new points were scored.
        """
        for entry in previous:
            if entry.get("match_force_error") is not None and entry.get("gp_force_error") is not None:
                self.gp_check.add(float(entry["match_force_error"]), float(entry["gp_force_error"]))
        radii = [entry["trust_radius"] for entry in previous if entry.get("trust_radius") is not None]
        if radii:
            trust = self.settings.trust_region
            self.trust_radius = min(trust.maximum, max(trust.rejection_floor, float(radii[-1])))

    # ------------------------------------------------------------------ public surface for drivers
    @property
    def parent_points(self) -> list[LabelledPoint]:
        return self.store.labelled

    @property
    def parent_call_count(self) -> int:
        """Parent points of this run (including ones restored from disk)."""
        return len(self.store.points)

    @property
    def parent_calls(self) -> int:
        """Parent computations in this process (points restored from disk not counted)."""
        return len(self.store.points) - self._restored_points

    @property
    def parent_events(self) -> int:
        """Bumped at every parent (or stored) point: a driver rebuilds its Hessian when it changes."""
        return self._parent_events

    @property
    def segment_start(self) -> LabelledPoint | None:
        """The parent point the current segment started from: trust radius and rho are measured from it."""
        return None if self._start_index is None else self.store.points[self._start_index].point

    def point_at(self, atoms: Atoms) -> LabelledPoint | None:
        """The parent point of exactly this structure, if there is one."""
        stored = self.store.lookup(atoms)
        return None if stored is None else stored.point

    @property
    def next_step(self) -> int:
        """The number the next force call gets (continues a resumed run's numbering)."""
        return self._step_offset + len(self.records) + 1

    def ask_parent(self, atoms: Atoms, reason: str, prediction: Prediction | None = None,
                   seconds_predict: float = 0.0) -> StepRecord:
        """Compute ``atoms`` with the parent, keep the point, update the trust region, refit.

        The learner's ``results`` become the parent's numbers. ``prediction`` is the surrogate's
        for this structure, from the fit that drove the segment (computed here when not given).
        """
        if prediction is None:
            started = time.perf_counter()
            prediction = self.predict(atoms)
            seconds_predict = time.perf_counter() - started
        step = self.next_step
        energy, forces, seconds = self._call_parent(atoms)
        self.store.add(LabelledPoint(atoms, energy, forces), reason, seconds_parent=seconds, step=step)
        energy_error = float(prediction.energy + self.offset - energy)  # the fit (and offset) that predicted it
        checked = self._check_gp(atoms, prediction, forces)
        parent_fmax = fmax_of(atoms, forces)
        update = self._update_trust(atoms, energy, parent_fmax, prediction)
        report = self._train()
        record = StepRecord(step, "parent", energy, parent_fmax, reason, seconds_predict=seconds_predict,
                            seconds_parent=seconds, seconds_finetune=report.seconds,
                            surrogate_fmax=fmax_of(atoms, prediction.forces))
        error = np.abs(prediction.forces - forces)[free_atom_mask(atoms)]
        record.extra["surrogate_force_mae"] = float(error.mean()) if error.size else 0.0
        record.extra["surrogate_energy_error"] = energy_error
        record.extra.update(trust_verdict=update.verdict, trust_radius=update.radius, trust_ratio=update.ratio,
                            parent_change=update.parent_change, predicted_change=update.predicted_change)
        if update.rejection is not None:
            record.extra["trust_rejection"] = update.rejection
        if checked is not None:
            record.extra.update(checked)
        if report.details:
            record.extra["finetune_lambda"] = report.details.get("lambda_rel")  # ridge strength, relative
        self._after_point(atoms, energy, forces, record)
        return record

    def predict(self, atoms: Atoms) -> Prediction:
        """The model's prediction: the refit surrogate with the correction around the segment start."""
        prediction = self.surrogate.predict(atoms)
        correction = self._correction
        if correction is None or len(correction.free) != len(atoms):
            return prediction
        energy, forces = correction.apply(atoms.positions, prediction.energy, prediction.forces)
        return Prediction(energy=energy, forces=forces, force_spread=prediction.force_spread)

    def model_calculator(self) -> ModelCalculator:
        """An ASE calculator on the model (:meth:`predict`): no parent call, nothing logged."""
        return ModelCalculator(self)

    def _check_gp(self, atoms: Atoms, prediction: Prediction, forces: np.ndarray) -> dict[str, Any] | None:
        """``"checked-gp"``: score the match alone and the match plus GP on a new parent point's forces.

        ``prediction`` is the model's from the correction that drove the segment (GP applied or
        not); the other model's forces differ from it by the GP's term. Returns, for the point's
        record, both RMS errors over the free atoms' force components and whether the GP drove
        the segment (None where there was no GP to check).
        """
        correction = self._correction
        if (self.settings.correction.kind != "checked-gp" or correction is None
                or len(correction.free) != len(atoms)):
            return None
        term = correction.gp_term(atoms.positions)
        if term is None:
            return None
        model = np.asarray(prediction.forces)
        match, with_gp = (model - term[1], model) if correction.use_gp else (model, model + term[1])
        free = free_atom_mask(atoms)

        def rms(predicted: np.ndarray) -> float:
            return float(np.sqrt(np.mean((predicted[free] - forces[free]) ** 2)))

        match_error, gp_error = rms(match), rms(with_gp)
        self.gp_check.add(match_error, gp_error)
        return {"match_force_error": match_error, "gp_force_error": gp_error, "gp_used": correction.use_gp}

    # ------------------------------------------------------------------ parent helpers
    def _pause_parent(self) -> None:
        """Stop the parent's processes until it is needed again (parents without pause: no-op)."""
        if self.settings.pause_parent and isinstance(self.parent, PausableParent):
            self.pause_reports.append(self.parent.pause())

    def _resume_parent(self) -> None:
        if isinstance(self.parent, PausableParent):
            self.parent.resume()

    def _call_parent(self, atoms: Atoms) -> tuple[float, np.ndarray, float]:
        started = time.perf_counter()
        helper = self._start_precompute(atoms)
        self._resume_parent()
        try:
            energy, forces = compute(self.parent, atoms)
        finally:
            if helper is not None:
                helper.join()
        seconds = time.perf_counter() - started
        self._pause_parent()
        return energy, forces, seconds

    def _start_precompute(self, atoms: Atoms):
        precompute = getattr(self.surrogate, "precompute", None)
        if not (self.settings.overlap_precompute and callable(precompute)):
            return None
        import threading

        snapshot = atoms.copy()

        def run() -> None:
            try:
                self.precompute_seconds.append(precompute([snapshot]))
            except Exception:  # noqa: BLE001 - fine_tune computes it again and reports any error
                pass

        thread = threading.Thread(target=run, name="surrogate-precompute", daemon=True)
        thread.start()
        return thread

    # ------------------------------------------------------------------ trust region and training
    def _update_trust(self, atoms: Atoms, energy: float, parent_fmax: float, prediction: Prediction) -> TrustUpdate:
        """Radius after the newest point (already stored), which becomes the segment's start."""
        start = self.segment_start
        newest = len(self.store.points) - 1
        rule = self.trust_rule(len(atoms))
        self.energy_noise = rule.energy_noise
        if start is None or self._start_prediction is None:
            update = update_radius(rule, self.trust_radius, None, None, 0.0)
        else:
            update = update_radius(rule, self.trust_radius, energy - start.energy,
                                   prediction.energy - self._start_prediction, largest_move(atoms, start.atoms),
                                   start_fmax=point_fmax(start), new_fmax=parent_fmax)
        self.trust_radius = update.radius
        self.trust_updates.append(update)
        self._previous_start_index = self._start_index
        self._start_index = newest
        return update

    def trust_rule(self, n_atoms: int) -> TrustRegion:
        """The trust region's settings with this parent: the noise band widened to the parent's SCF
        precision where it reports one (:meth:`TrustRegion.for_parent_precision`)."""
        tolerance = (self.parent.scf_energy_tolerance(n_atoms) if isinstance(self.parent, ReportsScfTolerance)
                     else None)
        return self.settings.trust_region.for_parent_precision(tolerance)

    def reject_newest(self) -> LabelledPoint | None:
        """Make the previous segment start (the point before a rejected one) the start again.

        The rejected point stays a training point; the driver moves the optimizer back to the
        returned point.
        """
        if self._previous_start_index is not None:
            self._start_index = self._previous_start_index
            self._previous_start_index = None
            if self._fits_changes:
                self._train()  # the changes are fitted relative to the start
            else:
                self._anchor_at_start()
        return self.segment_start

    @property
    def _fits_changes(self) -> bool:
        return self.settings.fit == "changes" and self.surrogate.fits_force_changes

    def _train(self) -> FineTuneReport:
        points = self.store.labelled
        start = self.segment_start
        if self._fits_changes and start is not None:
            report = self.surrogate.fine_tune_changes(points, start)
        elif self.settings.energy_weight > 0 and self.surrogate.fits_energy_differences:
            report = self.surrogate.fine_tune_energies(points, self.settings.energy_weight)
        else:
            report = self.surrogate.fine_tune(points)
        self.finetune_reports.append(report)
        window = points[-self.settings.offset_window:]
        values = [self._surrogate_values(p.atoms, free_atom_mask(p.atoms)) for p in window]
        self.offset = float(np.mean([p.energy - v.energy for p, v in zip(window, values)]))
        at_start = [v for p, v in zip(window, values) if p is start]  # the start is usually the newest point
        self._anchor_at_start(at_start[0] if at_start else None)
        return report

    def _surrogate_values(self, atoms: Atoms, free: np.ndarray) -> SurrogateValues:
        """The current fit's energy and forces at a parent point (only free atoms' forces are filled).

        With the local GP (many points per refit) from what the surrogate cached while fine-tuning
        (:meth:`Surrogate.values_at`); otherwise from a full prediction, which agrees with it to
        float32 rounding and keeps the GP-free learners' paths exactly what they were measured with.
        """
        if not self.settings.correction.builds_gp:
            prediction = self.surrogate.predict(atoms)
            return SurrogateValues(prediction.energy, np.asarray(prediction.forces))
        energy, free_forces = self.surrogate.values_at(atoms)
        forces = np.zeros((len(atoms), 3))
        forces[free] = free_forces
        return SurrogateValues(energy, forces)

    def _anchor_at_start(self, at_start: SurrogateValues | None = None) -> None:
        """The model around the segment start, from the current fit: surrogate energy there and the correction.

        ``at_start``: the current fit's values at the start, when the caller has them already.
        """
        start = self.segment_start
        if start is None:
            return
        free = free_atom_mask(start.atoms)
        at_start = at_start or self._surrogate_values(start.atoms, free)
        self._start_prediction = at_start.energy
        settings = self.settings.correction
        origin = _parent_values(start)
        others = []
        if settings.builds_gp:
            start_fmax = point_fmax(start)
            near = [p for p in self.store.labelled if p is not start and len(p.atoms) == len(start.atoms)
                    and np.array_equal(free_atom_mask(p.atoms), free)
                    and near_enough(settings, origin, _parent_values(p), free, start_fmax, point_fmax(p))]
            others = [(_parent_values(p), self._surrogate_values(p.atoms, free)) for p in near[-(settings.points - 1):]]
        use_gp = settings.kind == "local-gp" or self.gp_check.gp_is_better
        self._correction = ModelCorrection(settings, free, origin, at_start, others, use_gp=use_gp)

    # ------------------------------------------------------------------ ASE entry point
    def calculate(self, atoms=None, properties=("energy", "forces"), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        atoms = self.atoms
        self._steps_since_parent += 1
        stored = self.store.lookup(atoms)
        if stored is not None:  # labelled before (a resumed run, or the driver went back): no new call
            forces = np.array(stored.point.forces)
            record = StepRecord(self.next_step, "stored", stored.point.energy, fmax_of(atoms, forces),
                                stored.reason)
            self._after_point(atoms, stored.point.energy, forces, record)
            return
        started = time.perf_counter()
        prediction = self.predict(atoms)
        seconds_predict = time.perf_counter() - started
        free = free_atom_mask(atoms)
        start = self.segment_start
        displacement = largest_move(atoms, start.atoms) if start is not None else 0.0
        context = QueryContext(step=self.next_step, parent_calls=len(self.store.points),
                               steps_since_parent=self._steps_since_parent,
                               forces=constrained(atoms, prediction.forces), free=free,
                               force_spread=prediction.force_spread, displacement=displacement,
                               trust_radius=self.trust_radius, verify_fmax=self.verify_fmax)
        reason = self.policy.reason(context)
        if reason is None:
            energy = prediction.energy + self.offset
            self.results = {"energy": energy, "free_energy": energy, "forces": prediction.forces}
            record = StepRecord(self.next_step, "surrogate", energy, context.fmax, None,
                                seconds_predict=seconds_predict, surrogate_fmax=context.fmax)
            if prediction.force_spread is not None:
                record.extra["max_spread"] = float(np.max(prediction.force_spread[free], initial=0.0))
            self._log(record)
            return
        self.ask_parent(atoms, reason, prediction, seconds_predict)

    def _after_point(self, atoms: Atoms, energy: float, forces: np.ndarray, record: StepRecord) -> None:
        self._steps_since_parent = 0
        self._parent_events += 1
        self.atoms = atoms.copy()  # the results belong to this structure (ask_parent may get another)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
        self._log(record)

    def _log(self, record: StepRecord) -> None:
        self.records.append(record)
        entry = {k: v for k, v in record.__dict__.items() if k != "extra"}
        entry.update(record.extra)
        entry["time"] = time.time()
        self.store.log_step(entry)

    # ------------------------------------------------------------------ bookkeeping
    def summary(self) -> dict[str, Any]:
        parent = [r for r in self.records if r.source != "surrogate"]
        verdicts = [u.verdict for u in self.trust_updates]
        return {
            "force_calls": len(self.records),
            "parent_points": len(self.store.points),
            "parent_calls_this_process": self.parent_calls,
            "seconds_parent": sum(r.seconds_parent for r in self.records),
            "seconds_finetune": sum(r.seconds_finetune for r in self.records),
            "seconds_predict": sum(r.seconds_predict for r in self.records),
            "reasons": [r.reason for r in parent],
            "trust_verdicts": {v: verdicts.count(v) for v in sorted(set(verdicts))},
            "energy_noise": self.energy_noise,
            # per parent call: why it was asked, what it did to the trust region, how well the
            # model had predicted it (the record's extras), so a run can be diagnosed from its result
            "parent_log": [{"step": r.step, "source": r.source, "reason": r.reason, "energy": r.energy,
                            "fmax": r.fmax, **r.extra} for r in parent],
        }
