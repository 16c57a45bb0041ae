"""``OnlineLearner``: an ASE calculator that predicts with a surrogate and asks the parent when needed.

At each force call the surrogate predicts; when the query policy distrusts the prediction, the
parent computes the point, the caller receives the parent's numbers, the point is stored on disk
at once and the surrogate is fine-tuned on all parent points before the next call. A parent that
can pause (``VaspInteractive``) is paused while the surrogate predicts and trains.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from .query import AnyRule, QueryContext, make_policy
from .store import RunStore
from .surrogates.base import FineTuneReport, LabelledPoint, Surrogate, free_atom_mask

DEFAULT_TRUST_RADIUS = 0.5  # Angstrom; see query.TrustRadius


@dataclass
class LearnerSettings:
    """Knobs of the learner itself (the policy and the surrogate are passed separately)."""

    offset_window: int = 3  # parent points used to align surrogate energies to the parent's
    pause_parent: bool = True  # pause a parent that can pause while Python works
    # prepare the surrogate's fine-tuning data for a point (its Jacobian) in a thread while the
    # parent computes it: the parent's result is not needed for that part
    overlap_precompute: bool = True


@dataclass
class StepRecord:
    step: int
    source: str  # "surrogate", "parent" or "stored" (a parent point found on disk)
    energy: float
    fmax: float
    reason: str | None
    seconds_predict: float = 0.0
    seconds_parent: float = 0.0
    seconds_finetune: float = 0.0
    surrogate_fmax: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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


class OnlineLearner(Calculator):
    """Surrogate + parent + query policy, behind ASE's calculator interface.

    Args:
        parent: the expensive calculator (``VaspInteractive``, EMT, ...).
        surrogate: a :class:`~finetuna_core.surrogates.base.Surrogate`.
        policy: a query rule (default: relax-only at fmax 0.03, one initial parent point, and a
            0.5 A trust radius around the last parent point).
        directory: where parent points and the step log are kept (None: in memory only). A learner
            created on a directory with parent points resumes from them without recomputing any.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, parent: Calculator, surrogate: Surrogate, policy: AnyRule | None = None,
                 directory: str | None = None, settings: LearnerSettings | None = None):
        Calculator.__init__(self)
        self.parent = parent
        self.surrogate = surrogate
        self.policy = policy or make_policy("relax-only", trust_radius=DEFAULT_TRUST_RADIUS)
        self.settings = settings or LearnerSettings()
        self.store = RunStore(directory)
        self.records: list[StepRecord] = []
        self.offset = 0.0
        self.parent_calls = 0  # parent computations in this process (stored points not counted)
        self.finetune_reports: list[FineTuneReport] = []
        self._steps_since_parent = 0
        self._parent_events = 0  # bumped at every parent (or stored) point; the driver watches it
        self.pause_reports: list = []
        self.precompute_seconds: list[float] = []
        if self.store.points:
            self._train()

    # ------------------------------------------------------------------ parent helpers
    def _pause_parent(self) -> None:
        """Stop the parent's processes until it is needed again (parents without pause: no-op)."""
        pause = getattr(self.parent, "pause", None)
        if self.settings.pause_parent and callable(pause):
            report = pause()
            self.pause_reports.append(report)

    def _resume_parent(self) -> None:
        resume = getattr(self.parent, "resume", None)
        if callable(resume):
            resume()

    def _ask_parent(self, atoms: Atoms) -> tuple[float, np.ndarray, float]:
        started = time.perf_counter()
        helper = self._start_precompute(atoms)
        self._resume_parent()
        work = atoms.copy()
        work.calc = self.parent
        try:
            energy = float(work.get_potential_energy())
            forces = np.array(work.get_forces(apply_constraint=False))
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

    # ------------------------------------------------------------------ training
    def _train(self) -> FineTuneReport:
        points = self.store.labelled
        report = self.surrogate.fine_tune(points)
        self.finetune_reports.append(report)
        window = points[-self.settings.offset_window:]
        raw = [self.surrogate.predict(p.atoms).energy for p in window]
        self.offset = float(np.mean([p.energy - e for p, e in zip(window, raw)]))
        return report

    @property
    def parent_points(self) -> list[LabelledPoint]:
        return self.store.labelled

    # ------------------------------------------------------------------ ASE entry point
    def calculate(self, atoms=None, properties=("energy", "forces"), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        atoms = self.atoms
        step = len(self.records) + 1
        self._steps_since_parent += 1
        stored = self.store.lookup(atoms)
        if stored is not None:  # labelled before (a resumed run): the parent's numbers, no new call
            self._use_parent(atoms, stored.point.energy, np.array(stored.point.forces), stored.reason, "stored",
                             step, 0.0, None, 0.0)
            return
        started = time.perf_counter()
        prediction = self.surrogate.predict(atoms)
        seconds_predict = time.perf_counter() - started
        free = free_atom_mask(atoms)
        displacement = 0.0
        if self.store.points:
            last = self.store.points[-1].point.atoms
            if len(last) == len(atoms):
                moved = np.linalg.norm(atoms.positions - last.positions, axis=1)[free]
                displacement = float(moved.max(initial=0.0))
        context = QueryContext(step=step, parent_calls=len(self.store.points),
                               steps_since_parent=self._steps_since_parent,
                               forces=constrained(atoms, prediction.forces), free=free,
                               force_spread=prediction.force_spread, displacement=displacement)
        reason = self.policy.reason(context)
        if reason is None:
            energy = prediction.energy + self.offset
            self.results = {"energy": energy, "free_energy": energy, "forces": prediction.forces}
            record = StepRecord(step, "surrogate", energy, context.fmax, None, seconds_predict=seconds_predict,
                                surrogate_fmax=context.fmax)
            if prediction.force_spread is not None:
                record.extra["max_spread"] = float(np.max(prediction.force_spread[free], initial=0.0))
            self._log(record)
            return
        energy, forces, seconds = self._ask_parent(atoms)
        self.parent_calls += 1
        self._use_parent(atoms, energy, forces, reason, "parent", step, seconds, context.fmax, seconds_predict,
                         prediction)

    def _use_parent(self, atoms, energy, forces, reason, source, step, seconds_parent, surrogate_fmax,
                    seconds_predict, prediction=None) -> None:
        if source == "parent":
            self.store.add(LabelledPoint(atoms, energy, forces), reason, seconds_parent=seconds_parent,
                           step=step)
        self._steps_since_parent = 0
        self._parent_events += 1
        report = self._train() if source == "parent" else None
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
        record = StepRecord(step, source, energy, fmax_of(atoms, forces), reason, seconds_predict=seconds_predict,
                            seconds_parent=seconds_parent, seconds_finetune=report.seconds if report else 0.0,
                            surrogate_fmax=surrogate_fmax)
        if prediction is not None:
            error = np.abs(prediction.forces - forces)[free_atom_mask(atoms)]
            record.extra["surrogate_force_mae"] = float(error.mean()) if error.size else 0.0
            record.extra["surrogate_energy_error"] = float(prediction.energy + self.offset - energy)
        if report is not None and report.details:
            record.extra["finetune_lambda"] = report.details.get("lambda")
        self._log(record)

    def _log(self, record: StepRecord) -> None:
        self.records.append(record)
        entry = {k: v for k, v in record.__dict__.items() if k != "extra"}
        entry.update(record.extra)
        entry["time"] = time.time()
        self.store.log_step(entry)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def parent_call_count(self) -> int:
        """Parent points of this run (including ones restored from disk)."""
        return len(self.store.points)

    def summary(self) -> dict[str, Any]:
        parent = [r for r in self.records if r.source != "surrogate"]
        return {
            "force_calls": len(self.records),
            "parent_points": len(self.store.points),
            "parent_calls_this_process": self.parent_calls,
            "seconds_parent": sum(r.seconds_parent for r in self.records),
            "seconds_finetune": sum(r.seconds_finetune for r in self.records),
            "seconds_predict": sum(r.seconds_predict for r in self.records),
            "reasons": [r.reason for r in parent],
        }
