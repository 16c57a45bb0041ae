"""Query rules: when the online learner distrusts the surrogate and asks the parent (DFT).

Each rule looks at a :class:`QueryContext` and returns a reason (a short string that is logged
with the parent call) or None. Rules compose with :class:`AnyRule`; ``make_policy`` builds the
paper's variants by name. Relax-only is part of every policy: with its threshold equal to the
optimizer's fmax, a relaxation can only end on a parent-verified point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np


@dataclass(frozen=True)
class QueryContext:
    """What a rule may look at when a force call arrives."""

    step: int  # force calls so far in this run, this one included (1-based)
    parent_calls: int  # parent calls so far
    steps_since_parent: int  # force calls since the last parent call (this one included)
    forces: np.ndarray  # (N, 3) surrogate forces with constraints applied
    free: np.ndarray  # (N,) bool, atoms the optimizer may move
    force_spread: np.ndarray | None  # (N,) ensemble spread per atom, if the surrogate has one
    displacement: float = 0.0  # largest move of a free atom since the segment's start point (Angstrom)
    trust_radius: float | None = None  # the learner's current adaptive trust radius (Angstrom)
    verify_fmax: float | None = None  # a tighter relax-only threshold set by the driver (its final phase)

    @property
    def fmax(self) -> float:
        forces = self.forces[self.free]
        return float(np.sqrt((forces**2).sum(axis=1)).max(initial=0.0))


class QueryRule:
    """Base class: ``reason(context)`` returns why the parent is needed, or None."""

    def reason(self, context: QueryContext) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class InitialPoints(QueryRule):
    """Ask the parent for the first ``count`` force calls (a seed for fine-tuning)."""

    count: int = 1

    def reason(self, context: QueryContext) -> str | None:
        if context.parent_calls < self.count and context.step <= self.count:
            return f"initial point {context.step} of {self.count}"
        return None


@dataclass(frozen=True)
class RelaxOnly(QueryRule):
    """Ask the parent when the surrogate says the structure is relaxed (fmax <= threshold)."""

    fmax: float = 0.03

    def reason(self, context: QueryContext) -> str | None:
        value = context.fmax
        threshold = self.fmax if context.verify_fmax is None else min(self.fmax, context.verify_fmax)
        if value <= threshold:
            return f"surrogate fmax {value:.4f} <= {threshold:.4g} eV/A: verify"
        return None


@dataclass(frozen=True)
class KSteps(QueryRule):
    """Ask the parent when ``k`` force calls have passed since the last parent call."""

    k: int = 100

    def reason(self, context: QueryContext) -> str | None:
        if context.steps_since_parent >= self.k:
            return f"{context.steps_since_parent} steps since the last parent call (k = {self.k})"
        return None


@dataclass(frozen=True)
class Uncertainty(QueryRule):
    """Ask the parent when the ensemble's largest per-atom force spread exceeds ``threshold``."""

    threshold: float = 0.05

    def reason(self, context: QueryContext) -> str | None:
        if context.force_spread is None:
            return None
        spread = float(np.max(context.force_spread[context.free], initial=0.0))
        if spread > self.threshold:
            return f"force spread {spread:.4f} > {self.threshold} eV/A"
        return None


@dataclass(frozen=True)
class TrustRadius(QueryRule):
    """Ask the parent when a free atom moved more than a radius from the segment's start point.

    The start point is the newest accepted parent point (a rejected, uphill one does not count),
    where the optimizer resumes after every parent call. ``radius=None`` (the default policy) uses
    the learner's adaptive radius (:mod:`finetuna_core.trust`); a number fixes it. Not in the paper: a guard for
    surrogates far from the parent's physics, which otherwise carry soft coordinates a long way on
    forces no parent point supports.
    """

    radius: float | None = None
    # ask once a free atom is this far out (a fraction of the radius): with a driver that keeps the
    # optimizer's steps inside the radius (``Guards.step_within_radius``) the boundary itself is never
    # crossed, so the rule fires near it
    reach: float = 1.0

    def reason(self, context: QueryContext) -> str | None:
        radius = self.radius if self.radius is not None else context.trust_radius
        if radius is not None and context.displacement > self.reach * radius:
            return f"moved {context.displacement:.3f} A from the segment's start (trust radius {radius:.3f})"
        return None


@dataclass(frozen=True)
class AnyRule(QueryRule):
    """The first rule (in order) that asks for the parent decides."""

    rules: tuple[QueryRule, ...]

    def reason(self, context: QueryContext) -> str | None:
        for rule in self.rules:
            found = rule.reason(context)
            if found is not None:
                return found
        return None

    @property
    def needs_ensemble(self) -> bool:
        return any(isinstance(rule, Uncertainty) for rule in self.rules)


PolicyName = Literal["trust-region", "relax-only", "k-steps", "uncertainty"]
POLICIES: tuple[PolicyName, ...] = get_args(PolicyName)
DEFAULT_POLICY: PolicyName = "trust-region"
STALL_STEPS = 25  # the default policy's stall guard: surrogate steps without a parent point
TRUST_REACH = 0.9  # the default policy asks the parent once a free atom is 90% of the radius out


def make_policy(name: PolicyName = DEFAULT_POLICY, fmax: float = 0.03, k: int = 100, threshold: float = 0.05,
                initial_points: int = 1, trust_radius: float | None = None, stall_steps: int = STALL_STEPS,
                extra: Sequence[QueryRule] = ()) -> AnyRule:
    """A query policy by name; every one includes relax-only and the initial points.

    * ``"trust-region"`` (the default, not in the paper): relax-only, the learner's adaptive trust
      radius (or ``trust_radius`` fixed) and a stall guard of ``stall_steps`` surrogate steps;
    * the paper's ``"relax-only"``, ``"k-steps"`` (``k``) and ``"uncertainty"`` (``threshold``), as
      published; ``trust_radius`` adds a fixed :class:`TrustRadius` to them.
    """
    rules: list[QueryRule] = [InitialPoints(initial_points)] if initial_points > 0 else []
    rules.append(RelaxOnly(fmax))
    if name == "trust-region":
        rules.append(TrustRadius(trust_radius, reach=TRUST_REACH))
    elif trust_radius is not None:
        rules.append(TrustRadius(trust_radius))
    if name == "trust-region":
        rules.append(KSteps(stall_steps))
    elif name == "k-steps":
        rules.append(KSteps(k))
    elif name == "uncertainty":
        rules.append(Uncertainty(threshold))
    elif name != "relax-only":
        raise ValueError(f"unknown query policy {name!r}: choose one of {', '.join(POLICIES)}")
    rules.extend(extra)
    return AnyRule(tuple(rules))
