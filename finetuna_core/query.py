"""Query rules: when the online learner distrusts the surrogate and asks the parent (DFT).

Each rule looks at a :class:`QueryContext` and returns a reason (a short string that is logged
with the parent call) or None. Rules compose with :class:`AnyRule`; ``make_policy`` builds the
paper's variants by name. Relax-only is part of every policy: with its threshold equal to the
optimizer's fmax, a relaxation can only end on a parent-verified point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    displacement: float = 0.0  # largest move of a free atom since the last parent point (Angstrom)

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
        if value <= self.fmax:
            return f"surrogate fmax {value:.4f} <= {self.fmax} eV/A: verify"
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
    """Ask the parent when a free atom moved more than ``radius`` since the last parent point.

    Not in the paper: a guard for surrogates far from the parent's physics, which can otherwise
    lead the optimizer a long way into regions no parent point supports.
    """

    radius: float = 0.5

    def reason(self, context: QueryContext) -> str | None:
        if context.displacement > self.radius:
            return f"moved {context.displacement:.2f} A from the last parent point (> {self.radius})"
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


POLICIES = ("relax-only", "k-steps", "uncertainty")


def make_policy(name: str = "relax-only", fmax: float = 0.03, k: int = 100, threshold: float = 0.05,
                initial_points: int = 1, trust_radius: float | None = None,
                extra: Sequence[QueryRule] = ()) -> AnyRule:
    """The paper's policies by name; every one includes relax-only and the initial points.

    ``trust_radius`` adds :class:`TrustRadius` (not in the paper; off by default).
    """
    rules: list[QueryRule] = [InitialPoints(initial_points)] if initial_points > 0 else []
    rules.append(RelaxOnly(fmax))
    if trust_radius is not None:
        rules.append(TrustRadius(trust_radius))
    if name == "k-steps":
        rules.append(KSteps(k))
    elif name == "uncertainty":
        rules.append(Uncertainty(threshold))
    elif name != "relax-only":
        raise ValueError(f"unknown query policy {name!r}: choose one of {', '.join(POLICIES)}")
    rules.extend(extra)
    return AnyRule(tuple(rules))
