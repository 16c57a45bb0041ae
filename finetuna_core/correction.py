"""What the optimizer sees: the fine-tuned surrogate corrected to agree with the parent near the start.

Between parent calls the learner's optimizer moves on a *model*, never on the bare surrogate:

    model(x) = surrogate(x) + linear(x) + gp(x)

* ``linear``: the start-force match, the constant force ``F_parent(x0) - F_surrogate(x0)`` at the
  segment's start ``x0`` with its linear energy term, so the model's forces there are the parent's
  (first-order consistency, which a trust-region model needs);
* ``gp``: a Gaussian process over the free-atom coordinates, fitted to what ``surrogate + linear``
  still misses (energies and forces) at the other parent points near ``x0``. Its length scale is
  short (0.5 A): near those points the model takes the parent's local curvature, which the
  surrogate alone gets wrong in stiff directions (the model then promises descent the parent does
  not deliver, and a trust region shrinks to a crawl); a length scale away from every parent
  point it fades back to ``surrogate + linear``. A wide GP (1 A and more) or one without the
  linear prior extrapolated worse than the linear match alone (measured: more rejected segments).
  Where the surrogate is far from the parent (SevenNet-0 on EMT) the GP through quickly changing
  residuals can mispredict even at this length scale: ``"checked-gp"`` (the default learner's)
  fits it always but applies it only while it has predicted new parent points better than the
  match alone (:class:`GPCheck`).

Energies stay on the surrogate's scale: the model's energy at ``x0`` is the surrogate's there,
so only energy *changes* are meaningful, as in the learner's trust ratio. Pure numpy: no model,
no parent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
from scipy.linalg import cho_factor, cho_solve

CorrectionKind = Literal["none", "start-match", "local-gp", "checked-gp"]


@dataclass(frozen=True)
class CorrectionSettings:
    """How the model corrects the surrogate (see the module docstring).

    ``kind``: ``"none"`` (the bare refit surrogate, the paper's learner), ``"start-match"`` (the
    linear start-force match only), ``"local-gp"`` (the match plus the local GP; the segments
    learner's) or ``"checked-gp"`` (the GP is built as for ``"local-gp"`` but used only while it
    has predicted the parent's forces better than the match alone; see :class:`GPCheck`).
    ``check_points``: how many of the newest parent points that check compares on.
    ``length``: GP length scale (A, over all free-atom coordinates together); ``points``: parent
    points in the GP, the start included (the newest others near the start); ``reach``: others
    whose largest free-atom move from the start is beyond this (A) are left out, and so are others
    whose parent fmax exceeds ``force_ratio`` times the start's (at least ``force_floor`` eV/A):
    strained early points, where the residual changes faster than the length scale (with them the
    GP extrapolated forces several eV/A off on EMT); ``noise_energy`` (eV) and ``noise_force``
    (eV/A): the GP's observation noise, which also keeps it well conditioned.
    """

    kind: CorrectionKind = "local-gp"
    length: float = 0.5
    points: int = 10
    reach: float = 1.0
    force_ratio: float = 4.0
    force_floor: float = 0.5
    noise_energy: float = 2e-3
    noise_force: float = 2e-3
    check_points: int = 3

    @property
    def builds_gp(self) -> bool:
        """Whether the correction fits the local GP (used always, or only once it has proved better)."""
        return self.kind in ("local-gp", "checked-gp")

    def __post_init__(self) -> None:
        if self.kind not in get_args(CorrectionKind):
            kinds = ", ".join(get_args(CorrectionKind))
            raise ValueError(f"unknown correction kind {self.kind!r}: choose one of {kinds}")
        if self.check_points < 1:
            raise ValueError(f"check_points must be >= 1, got {self.check_points}")
        if min(self.length, self.reach, self.force_ratio, self.force_floor) <= 0:
            raise ValueError("correction length, reach, force_ratio and force_floor must be > 0")
        if self.points < 2:
            raise ValueError("a local GP needs points >= 2 (the start and one other)")
        if self.noise_energy <= 0 or self.noise_force <= 0:
            raise ValueError("correction noise must be > 0")


class ResidualGP:
    """A zero-mean GP with a squared-exponential kernel, observed in values and gradients.

    ``fit(X, values, gradients)`` with ``X`` (N, D); ``predict(x)`` returns the posterior mean
    value and its gradient at ``x`` (D,). The signal amplitude is the closed-form maximum
    likelihood estimate for the given length scale, so only the length scale is a setting.
    """

    def __init__(self, length: float, noise_value: float, noise_gradient: float):
        self.length = float(length)
        self.noise_value = float(noise_value)
        self.noise_gradient = float(noise_gradient)
        self.X: np.ndarray | None = None
        self.amplitude2 = 0.0
        self._alpha: np.ndarray | None = None

    def _unit_kernel(self, X: np.ndarray) -> np.ndarray:
        """Covariance (amplitude 1) of [values, gradients] at X, ordered values first."""
        n, d = X.shape
        l2 = self.length**2
        diff = X[:, None, :] - X[None, :, :]
        k = np.exp(-(diff**2).sum(-1) / (2 * l2))
        value_gradient = (k[:, :, None] * diff / l2).reshape(n, n * d)  # cov(f(x_i), df(x_j)/dx_j)
        gradient_gradient = k[:, :, None, None] * (np.eye(d)[None, None] / l2
                                                   - diff[:, :, :, None] * diff[:, :, None, :] / l2**2)
        K = np.empty((n * (d + 1), n * (d + 1)))
        K[:n, :n] = k
        K[:n, n:] = value_gradient
        K[n:, :n] = value_gradient.T
        K[n:, n:] = gradient_gradient.transpose(0, 2, 1, 3).reshape(n * d, n * d)
        return K

    def fit(self, X: np.ndarray, values: np.ndarray, gradients: np.ndarray) -> ResidualGP:
        X = np.asarray(X, dtype=float)
        n, d = X.shape
        y = np.concatenate([np.asarray(values, dtype=float).ravel(), np.asarray(gradients, dtype=float).ravel()])
        if y.shape != (n * (d + 1),):
            raise ValueError(f"values ({n},) and gradients ({n}, {d}) do not match X {X.shape}")
        K = self._unit_kernel(X)
        noise = np.concatenate([np.full(n, self.noise_value**2), np.full(n * d, self.noise_gradient**2)])
        # amplitude: the maximum-likelihood scale of the kernel for these data (noise held fixed)
        first = cho_solve(cho_factor(K + np.diag(noise)), y)
        self.amplitude2 = max(float(y @ first) / len(y), 1e-12)
        self._alpha = cho_solve(cho_factor(self.amplitude2 * K + np.diag(noise)), y)
        self.X = X
        return self

    def predict(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        if self.X is None or self._alpha is None:
            raise RuntimeError("fit the GP before predicting")
        n, d = self.X.shape
        l2 = self.length**2
        diff = np.asarray(x, dtype=float)[None, :] - self.X
        k = self.amplitude2 * np.exp(-(diff**2).sum(-1) / (2 * l2))
        alpha_value = self._alpha[:n]
        alpha_gradient = self._alpha[n:].reshape(n, d)
        projected = (diff * alpha_gradient).sum(-1)
        value = float(k @ alpha_value + k @ projected / l2)
        gradient = (-(k * alpha_value)[:, None] * diff / l2 - (k * projected)[:, None] * diff / l2**2
                    + k[:, None] * alpha_gradient / l2).sum(0)
        return value, gradient


@dataclass(frozen=True)
class SurrogateValues:
    """The surrogate's energy and forces (all atoms) at one structure, under the current fit."""

    energy: float
    forces: np.ndarray


@dataclass(frozen=True)
class ParentValues:
    """A parent point as the correction needs it: positions (N, 3), energy, forces (N, 3)."""

    positions: np.ndarray
    energy: float
    forces: np.ndarray


def near_enough(settings: CorrectionSettings, start: ParentValues, other: ParentValues, free: np.ndarray,
                start_fmax: float, other_fmax: float) -> bool:
    """Whether ``other`` joins the GP around ``start`` (its reach and force scale, see the settings)."""
    moved = np.linalg.norm(np.asarray(other.positions) - np.asarray(start.positions), axis=1)[free]
    return (float(moved.max(initial=0.0)) <= settings.reach
            and other_fmax <= max(settings.force_ratio * start_fmax, settings.force_floor))


class ModelCorrection:
    """The correction around one start point (built afresh after every refit or new start).

    Args:
        start: the segment's start (parent values) and the surrogate's values there.
        others: other parent points near the start with the surrogate's values there, newest
            last; only used by ``"local-gp"``.
        free: (N,) mask of the atoms the optimizer moves.
    """

    def __init__(self, settings: CorrectionSettings, free: np.ndarray, start: ParentValues,
                 start_surrogate: SurrogateValues,
                 others: Sequence[tuple[ParentValues, SurrogateValues]] = (), use_gp: bool = True):
        self.settings = settings
        self.use_gp = use_gp  # False: the GP is fitted (its forces can be checked) but not applied
        self.free = np.asarray(free, dtype=bool)
        self.origin = np.array(start.positions, dtype=float)
        self.force_offset = np.zeros_like(self.origin)
        if settings.kind != "none":
            difference = np.asarray(start.forces, dtype=float) - np.asarray(start_surrogate.forces, dtype=float)
            self.force_offset[self.free] = difference[self.free]
        self.gp: ResidualGP | None = None
        self._gp_at_start = (0.0, np.zeros(3 * int(self.free.sum())))
        if settings.builds_gp and others:
            self.gp = self._fit_gp(start, start_surrogate, others)
            # the noisy GP is not exactly zero at the start; take its value and slope there out, so
            # the model's forces at the start are the parent's to the last digit (a start the parent
            # calls unconverged must look unconverged to the model too)
            self._gp_at_start = self.gp.predict(self.origin[self.free].ravel())

    @property
    def points_in_gp(self) -> int:
        """Parent points the GP interpolates (the start included); 0 without a GP."""
        return 0 if self.gp is None or self.gp.X is None else len(self.gp.X)

    def _linear(self, positions: np.ndarray, energy: float, forces: np.ndarray) -> tuple[float, np.ndarray]:
        shift = float(np.sum(self.force_offset * (positions - self.origin)))
        return energy - shift, forces + self.force_offset

    def _fit_gp(self, start: ParentValues, start_surrogate: SurrogateValues,
                others: Sequence[tuple[ParentValues, SurrogateValues]]) -> ResidualGP:
        s = self.settings
        X = [self.origin[self.free].ravel()]
        values = [0.0]
        gradients = [np.zeros(3 * int(self.free.sum()))]
        for parent, surrogate in others:
            energy, forces = self._linear(parent.positions, surrogate.energy, np.asarray(surrogate.forces))
            X.append(np.asarray(parent.positions)[self.free].ravel())
            values.append((parent.energy - start.energy) - (energy - start_surrogate.energy))
            gradients.append(-(np.asarray(parent.forces) - forces)[self.free].ravel())
        return ResidualGP(s.length, s.noise_energy, s.noise_force).fit(np.array(X), np.array(values),
                                                                       np.array(gradients))

    def gp_term(self, positions: np.ndarray) -> tuple[float, np.ndarray] | None:
        """The GP's energy and force corrections at ``positions`` ((N, 3) forces; None without a GP)."""
        if self.gp is None:
            return None
        x = np.asarray(positions, dtype=float)[self.free].ravel()
        value, gradient = self.gp.predict(x)
        value0, gradient0 = self._gp_at_start
        value = value - value0 - float(gradient0 @ (x - self.origin[self.free].ravel()))
        forces = np.zeros_like(self.origin)
        forces[self.free] = -(gradient - gradient0).reshape(-1, 3)
        return value, forces

    def apply(self, positions: np.ndarray, energy: float, forces: np.ndarray) -> tuple[float, np.ndarray]:
        """The model's energy and forces at ``positions`` from the surrogate's there."""
        energy, forces = self._linear(np.asarray(positions, dtype=float), energy, np.asarray(forces, dtype=float))
        term = self.gp_term(positions) if self.use_gp else None
        if term is None:
            return energy, forces
        return energy + term[0], forces + term[1]


@dataclass
class GPCheck:
    """Whether the local GP has earned its place (``"checked-gp"``), judged on parent points it had not seen.

    At every new parent point both models that could have driven the segment are compared with
    the parent's forces there: the start match alone, and the match plus the GP fitted before the
    point was known. The GP is applied while its force error, summed over the newest
    ``window`` points where both could be compared, is the smaller. Where the pre-trained
    surrogate is close to the parent the GP's local curvature saves parent calls; where it is far,
    a GP through residuals that change quickly extrapolates worse than the match alone and costs
    calls (rejected segments), and the check keeps it off.
    """

    window: int
    match_errors: list[float] = field(default_factory=list)
    gp_errors: list[float] = field(default_factory=list)

    def add(self, match_error: float, gp_error: float) -> None:
        self.match_errors.append(match_error)
        self.gp_errors.append(gp_error)

    @property
    def gp_is_better(self) -> bool:
        if not self.gp_errors:
            return False
        return sum(self.gp_errors[-self.window:]) < sum(self.match_errors[-self.window:])
