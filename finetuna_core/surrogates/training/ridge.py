"""Ridge refit of a force model that is linear in its weights, with cross-validation and bootstrap.

Pure numpy, no model code.  Every parent point ``p`` contributes rows ``F_p = M_p w`` (the
forces on its free atoms, flattened) with a known design matrix ``M_p``; the fit minimises

    sum_p c_p |M_p w - y_p|^2 + lam |w - w0|^2

that is, a ridge regression pulled toward the pre-trained weights ``w0``.  The strength is
``lam = rel * trace(G) / n_features`` (``G`` the weighted normal matrix), so one grid of relative
strengths suits any system size; ``rel`` is chosen by cross-validation: leave one point out when
there are two or more points, K folds over the free atoms of a single point otherwise.

A point may also carry one energy row, ``(S_p - S_a) . w = E_p - E_a`` (its energy relative to an
anchor point of the same composition), weighted ``energy_weight / (dE^2 + energy_floor^2)``: with
``energy_weight = 1`` a point's energy counts as much as all its forces at the same relative error.
It is held out with its point. Off by default (see :class:`RidgeSettings`); the default learner
turns it on (``LearnerSettings.energy_weight``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "CvRule",
    "CvScheme",
    "LinearForcePoint",
    "RidgeFit",
    "RidgeSettings",
    "bootstrap_deviations",
    "fallback_lambda",
    "fit_ridge",
    "lambda_scale",
    "point_weights",
    "ridge_path",
    "train_mae",
]

CvRule = Literal["auto", "min", "one_se"]

DEFAULT_LAMBDA_GRID: tuple[float, ...] = tuple(float(x) for x in np.logspace(-6, 2, 17))


class CvScheme(enum.Enum):
    """How the regularisation strength was validated."""

    LEAVE_ONE_POINT_OUT = "leave-one-point-out"
    ATOM_FOLDS = "folds over free atoms"
    NONE = "none"


@dataclass(frozen=True)
class RidgeSettings:
    """Options of the ridge refit.

    Attributes:
        relative_weighting: weight point p by ``1 / (mean(y_p^2) + force_floor^2)`` so large-force
            early frames of a relaxation do not dominate the squared loss.
        force_floor: eV/Å, the floor in that weight.
        recency_decay: extra weight ``recency_decay ** (n - 1 - p)`` on point p (1.0 = none).
        lambda_grid: candidate strengths relative to ``trace(G) / n_features``; ``inf`` (keep
            ``w0``) is always a candidate too.
        cv_rule: ``"min"`` (lowest CV error), ``"one_se"`` (strongest regularisation within one
            standard error of the minimum) or ``"auto"``: ``"min"`` for leave-one-point-out,
            ``"one_se"`` for the atom folds of a single point.
        one_point_folds: number of folds over the free atoms of a single point.
        single_point_min_lambda: with a single point only strengths >= this are candidates: the
            atoms of one frame are correlated, so atom-fold CV is optimistic.
        fixed_lambda: skip CV and use this relative strength.
        seed: seed of the atom folds and of the bootstrap resampling.
        energy_weight: weight of a point's energy row against its forces (0: forces only).
        energy_floor: eV, the floor of the energy row's relative weight.
    """

    relative_weighting: bool = True
    force_floor: float = 0.05
    recency_decay: float = 1.0
    lambda_grid: tuple[float, ...] = DEFAULT_LAMBDA_GRID
    cv_rule: CvRule = "auto"
    one_point_folds: int = 5
    single_point_min_lambda: float = 1.0
    fixed_lambda: float | None = None
    seed: int = 0
    energy_weight: float = 0.0
    energy_floor: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambda_grid", tuple(float(x) for x in self.lambda_grid))
        checks = [
            (self.force_floor > 0, "force_floor must be > 0"),
            (0 < self.recency_decay <= 1, "recency_decay must be in (0, 1]"),
            (len(self.lambda_grid) > 0 and min(self.lambda_grid) > 0, "lambda_grid must be > 0"),
            (self.cv_rule in ("auto", "min", "one_se"), f"unknown cv_rule {self.cv_rule!r}"),
            (self.single_point_min_lambda >= 0, "single_point_min_lambda must be >= 0"),
            (self.one_point_folds >= 2, "one_point_folds must be >= 2"),
            (self.fixed_lambda is None or self.fixed_lambda > 0, "fixed_lambda must be > 0"),
            (self.energy_weight >= 0, "energy_weight must be >= 0"),
            (self.energy_floor > 0, "energy_floor must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True, eq=False)
class LinearForcePoint:
    """One parent point as a linear model: ``forces on free atoms = design @ w``.

    Attributes:
        design: (3 n_free, n_features) matrix ``M``.
        target: (3 n_free,) parent forces on the free atoms, flattened (atom, x/y/z).
        energy_design, energy_target: the optional energy row ``(S_p - S_a, E_p - E_a)``
            (see the module docstring); None without one.
    """

    design: np.ndarray
    target: np.ndarray
    energy_design: np.ndarray | None = None
    energy_target: float = 0.0

    def __post_init__(self) -> None:
        if self.design.ndim != 2 or self.target.shape != (self.design.shape[0],):
            raise ValueError(f"design {self.design.shape} and target {self.target.shape} do not match")
        if self.design.shape[0] % 3:
            raise ValueError("rows must come in (x, y, z) triples of free atoms")
        if self.energy_design is not None and self.energy_design.shape != (self.design.shape[1],):
            raise ValueError(f"energy row {self.energy_design.shape} does not match {self.design.shape[1]} features")

    @property
    def n_free(self) -> int:
        """Number of free atoms (rows / 3)."""
        return self.design.shape[0] // 3


@dataclass(frozen=True)
class RidgeFit:
    """Result of :func:`fit_ridge`.

    Attributes:
        weights: the fitted ``w`` (``w0`` itself when the pre-trained weights were kept).
        lambda_rel, lambda_abs: chosen strength, relative and absolute (``inf``: kept ``w0``).
        scheme, n_folds: how the strength was validated.
        cv_grid, cv_error: the candidate relative strengths and their summed CV errors
            (None without CV), ``cv_best_rel`` the strength of the lowest error.
        lambda_ref: ``trace(G) / n_features``.
    """

    weights: np.ndarray
    lambda_rel: float
    lambda_abs: float
    lambda_ref: float
    scheme: CvScheme
    n_folds: int
    cv_grid: tuple[float, ...] | None
    cv_error: tuple[float, ...] | None
    cv_best_rel: float | None
    delta_norm_rel: float

    @property
    def kept_pretrained(self) -> bool:
        """True when no finite strength won: the weights are ``w0``."""
        return not np.isfinite(self.lambda_abs)

    @property
    def cv_mode(self) -> str:
        """Human-readable validation scheme, e.g. ``"5-fold over free atoms"``."""
        if self.scheme is CvScheme.ATOM_FOLDS:
            return f"{self.n_folds}-fold over free atoms"
        return self.scheme.value

    def details(self) -> dict[str, Any]:
        """Plain numbers for a fine-tune report."""
        cv = None
        if self.cv_grid is not None and self.cv_error is not None:
            cv = {"lambda_rel": list(self.cv_grid), "error": list(self.cv_error), "best_rel": self.cv_best_rel}
        return {
            "cv_mode": self.cv_mode,
            "lambda_ref": self.lambda_ref,
            "cv": cv,
            "lambda_rel": self.lambda_rel,
            "lambda_abs": self.lambda_abs,
            "kept_pretrained": self.kept_pretrained,
            "delta_norm_rel": self.delta_norm_rel,
        }


def point_weights(points: Sequence[LinearForcePoint], settings: RidgeSettings) -> np.ndarray:
    """Per-point weights ``c_p`` of the squared-error loss (oldest point first)."""
    n = len(points)
    weights = np.empty(n)
    for p, point in enumerate(points):
        c = 1.0 / len(point.target)
        if settings.relative_weighting:
            c /= float(np.mean(point.target**2)) + settings.force_floor**2
        weights[p] = c * settings.recency_decay ** (n - 1 - p)
    return weights


def lambda_scale(points: Sequence[LinearForcePoint], weights: np.ndarray) -> float:
    """``trace(G) / n_features``, the unit of the relative strengths."""
    n_features = points[0].design.shape[1]
    trace = sum(c * float(np.sum(p.design**2)) for p, c in zip(points, weights, strict=True))
    return max(trace / n_features, 1e-30)


def fallback_lambda(points: Sequence[LinearForcePoint], weights: np.ndarray, settings: RidgeSettings) -> float:
    """Absolute strength of the largest finite grid value (for a spread when CV kept ``w0``)."""
    return max(settings.lambda_grid) * lambda_scale(points, weights)


def ridge_path(gram: np.ndarray, rhs: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """Solutions of ``(gram + lam I) d = rhs`` for every lam (rows), by one eigendecomposition.

    A row for an infinite lam is zero (the limit).
    """
    eigenvalues, vectors = np.linalg.eigh(gram)
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    coef = vectors.T @ rhs
    out = np.zeros((len(lambdas), gram.shape[0]))
    finite = np.isfinite(lambdas)
    out[finite] = (coef[None, :] / (eigenvalues[None, :] + lambdas[finite, None])) @ vectors.T
    return out


def _rows(point: LinearForcePoint, c: float, w0: np.ndarray, settings: RidgeSettings) -> tuple[np.ndarray, np.ndarray]:
    """A point's design and residual from ``w0``; its energy row scaled so that under the point's
    weight ``c`` it gets its own weight."""
    design, residual = point.design, point.target - point.design @ w0
    if point.energy_design is None or settings.energy_weight == 0:
        return design, residual
    energy_c = settings.energy_weight / (point.energy_target**2 + settings.energy_floor**2)
    scale = np.sqrt(energy_c / c)
    row = point.energy_design[None, :] * scale
    row_residual = (point.energy_target - float(point.energy_design @ w0)) * scale
    return np.vstack([design, row]), np.append(residual, row_residual)


def _cv_blocks(
    points: Sequence[LinearForcePoint], weights: np.ndarray, w0: np.ndarray, settings: RidgeSettings
) -> tuple[CvScheme, int, list[tuple[np.ndarray, np.ndarray, float]]]:
    """The held-out blocks (design, residual from w0, weight) of the CV scheme."""
    if len(points) >= 2:
        blocks = [(*_rows(p, float(c), w0, settings), float(c)) for p, c in zip(points, weights, strict=True)]
        return CvScheme.LEAVE_ONE_POINT_OUT, len(points), blocks
    point, c = points[0], float(weights[0])
    n_folds = min(settings.one_point_folds, point.n_free)
    scheme = CvScheme.ATOM_FOLDS if n_folds >= 2 else CvScheme.NONE
    n_folds = max(n_folds, 1)
    rng = np.random.default_rng(settings.seed)
    fold_of_atom = rng.permutation(np.arange(point.n_free) % n_folds)
    rows = np.repeat(fold_of_atom, 3)
    blocks = []
    for fold in range(n_folds):
        sel = rows == fold
        blocks.append((point.design[sel], point.target[sel] - point.design[sel] @ w0, c))
    return scheme, n_folds, blocks


def fit_ridge(
    points: Sequence[LinearForcePoint], weights: np.ndarray, w0: np.ndarray, settings: RidgeSettings
) -> RidgeFit:
    """Ridge toward ``w0`` with the strength chosen by cross-validation (see the module docstring)."""
    if not points:
        raise ValueError("fit_ridge needs at least one point")
    w0 = np.asarray(w0, dtype=float)
    ref = lambda_scale(points, weights)
    scheme, n_folds, blocks = _cv_blocks(points, weights, w0, settings)
    gram = sum(c * M.T @ M for M, _, c in blocks)
    rhs = sum(c * M.T @ res for M, res, c in blocks)

    cv_grid = cv_error = best_rel = None
    if settings.fixed_lambda is not None:
        rel = float(settings.fixed_lambda)
    elif scheme is CvScheme.NONE:
        rel = float("inf")  # nothing to validate a change on: keep the pre-trained weights
    else:
        grid = np.array(sorted(settings.lambda_grid) + [np.inf])
        if len(points) == 1:
            floor = settings.single_point_min_lambda
            grid = np.unique(np.concatenate([[floor] if floor > 0 else [], grid[grid >= floor]]))
        lambdas = grid * ref
        errors = np.zeros((len(blocks), len(grid)))
        for i, (M_b, res_b, c_b) in enumerate(blocks):
            gram_b = M_b.T @ M_b
            rhs_b = M_b.T @ res_b
            deltas = ridge_path(gram - c_b * gram_b, rhs - c_b * rhs_b, lambdas)
            quad = np.einsum("li,ij,lj->l", deltas, gram_b, deltas)
            errors[i] = c_b * (float(res_b @ res_b) - 2 * deltas @ rhs_b + quad)
        total = errors.sum(axis=0)
        best = int(np.argmin(total))
        choice = best
        rule = settings.cv_rule
        if rule == "auto":
            rule = "min" if len(points) >= 2 else "one_se"
        if rule == "one_se" and len(blocks) > 1:
            se = float(np.std(errors[:, best], ddof=1) * np.sqrt(len(blocks)))
            within = np.flatnonzero(total <= total[best] + se)
            choice = int(within.max())  # strongest regularisation within one standard error
        rel = float(grid[choice])
        cv_grid = tuple(float(x) for x in grid)
        cv_error = tuple(float(x) for x in total)
        best_rel = float(grid[best])

    lam = rel * ref
    delta = ridge_path(gram, rhs, np.array([lam]))[0] if np.isfinite(lam) else np.zeros_like(w0)
    return RidgeFit(
        weights=w0 + delta,
        lambda_rel=rel,
        lambda_abs=lam,
        lambda_ref=ref,
        scheme=scheme,
        n_folds=n_folds,
        cv_grid=cv_grid,
        cv_error=cv_error,
        cv_best_rel=best_rel,
        delta_norm_rel=float(np.linalg.norm(delta) / np.linalg.norm(w0)),
    )


def bootstrap_deviations(
    points: Sequence[LinearForcePoint], weights: np.ndarray, w0: np.ndarray, lam: float, n_members: int, seed: int
) -> np.ndarray:
    """``n_members`` ridge fits on bootstrap resamples of the free atoms, as offsets from their mean.

    Each member resamples the free atoms of every point (with replacement) and solves the ridge
    at the absolute strength ``lam``; the (n_members, n_features) offsets sum to zero, so adding
    them to a fitted ``w`` keeps the ensemble mean at ``w``.
    """
    n_features = len(w0)
    rng = np.random.default_rng(seed + 7919 * len(points))
    deltas = np.zeros((n_members, n_features))
    for k in range(n_members):
        gram = lam * np.eye(n_features)
        rhs = np.zeros(n_features)
        for point, c in zip(points, weights, strict=True):
            n = point.n_free
            counts = rng.multinomial(n, np.full(n, 1.0 / n))
            weighted = point.design * np.repeat(counts, 3).astype(float)[:, None]
            gram += c * weighted.T @ point.design
            rhs += c * weighted.T @ (point.target - point.design @ w0)
        deltas[k] = np.linalg.solve(gram, rhs)
    return deltas - deltas.mean(axis=0)


def train_mae(points: Sequence[LinearForcePoint], w: np.ndarray) -> float:
    """Mean over points of the force MAE of ``w`` on each point's free atoms."""
    return float(np.mean([np.mean(np.abs(p.design @ w - p.target)) for p in points]))
