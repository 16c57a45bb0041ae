"""VASP's own ionic relaxation for the fake: conjugate gradients (IBRION = 2), quasi-Newton (1).

The CG follows VASP's pattern: along each search direction a trial step (scaled by POTIM) and
a corrector step to the line minimum interpolated from the forces at both points (from the
energies where the trial went uphill); every point is one ionic step, i.e. one DFT call. Trial and
corrector steps are bounded per atom, and a corrector point above the line's start is rejected:
the search restarts from the start along steepest descent with a shorter trial step, as VASP
does not accept a line minimum that raised the energy. IBRION = 1 is a BFGS stand-in for VASP's RMM-DIIS.
Positions are Cartesian and flattened; ``mask`` is 1 for free components (selective dynamics).
"""

from __future__ import annotations

import numpy as np

MAX_TRIAL_DISPLACEMENT = 0.4  # Angstrom per atom
MAX_QN_DISPLACEMENT = 0.2
ENERGY_RISE_TOLERANCE = 1e-4  # eV: a corrector point this far above the line's start is rejected
MIN_SCALE = 0.01


def _cap(step: np.ndarray, limit: float) -> np.ndarray:
    per_atom = np.linalg.norm(step.reshape(-1, 3), axis=1).max(initial=0.0)
    return step * (limit / per_atom) if per_atom > limit else step


class ConjugateGradient:
    """Polak-Ribiere CG with VASP's trial/corrector line search."""

    def __init__(self, potim: float, mask: np.ndarray):
        self.potim = potim
        self.mask = mask.ravel().astype(float)
        self.phase = "start"
        self.x0 = self.g0 = self.direction = None
        self.e0 = 0.0
        self.previous_force = None
        self.trial_length = 0.0
        self.scale = 1.0
        self.message = ""

    def step(self, x: np.ndarray, energy: float, forces: np.ndarray) -> np.ndarray:
        force = forces.ravel() * self.mask
        x = x.ravel()
        if self.phase == "corrector" and energy > self.e0 + ENERGY_RISE_TOLERANCE:
            # the line minimum is above the line's start: VASP does not accept that; restart from the
            # start along steepest descent with a much shorter trial step (CG history dropped)
            self.scale = max(MIN_SCALE, 0.25 * self.scale)
            self.previous_force = None
            return self._new_direction(self.x0, self.e0, self.g0)
        if self.phase == "trial":
            unit = self.direction / np.linalg.norm(self.direction)
            length = self.trial_length
            slope0 = -float(self.g0 @ unit)  # dE/dt at t = 0
            slope1 = -float(force @ unit)  # dE/dt at the trial point
            if energy > self.e0:  # the trial went uphill: the minimum is inside; fit E0, slope0, E1
                curvature = (energy - self.e0 - slope0 * length) / length**2
                t = -slope0 / (2 * curvature) if curvature > 0 else 0.5 * length
                t = float(np.clip(t, 0.1 * length, 0.9 * length))
            elif slope1 > slope0:  # curvature positive: secant to the zero of the slope
                t = length * slope0 / (slope0 - slope1)
                t = float(np.clip(t, 0.1 * length, 4.0 * length))
            else:
                t = 2.0 * length
            self.scale = float(np.clip(self.scale * t / self.trial_length, 0.2, 5.0))
            self.message = (f"curvature: {slope1 - slope0:8.2f} expect dE={0.5 * slope0 * t:10.3E}"
                            f" dE for cont linesearch {0.0:10.3E}")
            self.phase = "corrector"
            return (self.x0 + _cap(t * unit, MAX_TRIAL_DISPLACEMENT)).reshape(-1, 3)
        return self._new_direction(x, energy, force)

    def _new_direction(self, x: np.ndarray, energy: float, force: np.ndarray) -> np.ndarray:
        """A start or accepted corrector point: a new search direction and its trial step."""
        if self.previous_force is None:
            direction = force.copy()
        else:
            old = self.previous_force
            beta = max(0.0, float(force @ (force - old)) / max(float(old @ old), 1e-30))
            direction = force + beta * self.direction
            if float(direction @ force) <= 0:
                direction = force.copy()
        self.previous_force = force.copy()
        self.direction = direction
        self.x0, self.g0, self.e0 = x.copy(), force.copy(), energy
        trial = _cap(self.potim * self.scale * direction, MAX_TRIAL_DISPLACEMENT)
        self.trial_length = float(np.linalg.norm(trial))
        self.message = (f"trial: gam= {0.0:8.5f} g(F)= {float(force @ force):10.3E} g(S)= {0.0:10.3E}"
                        f" ort = {0.0:10.3E} (trialstep = {self.scale:10.3E})")
        self.phase = "trial"
        if self.trial_length == 0.0:
            return x.reshape(-1, 3)
        return (x + trial).reshape(-1, 3)


class QuasiNewton:
    """BFGS on the free components, steps scaled by POTIM and capped per atom."""

    def __init__(self, potim: float, mask: np.ndarray, stiffness: float = 70.0):
        self.mask = mask.ravel().astype(float)
        self.potim = potim
        self.hessian: np.ndarray | None = None
        self.stiffness = stiffness
        self.previous: tuple[np.ndarray, np.ndarray] | None = None
        self.message = ""

    def step(self, x: np.ndarray, energy: float, forces: np.ndarray) -> np.ndarray:
        x = x.ravel()
        force = forces.ravel() * self.mask
        if self.hessian is None:
            self.hessian = np.eye(len(x)) * self.stiffness
        if self.previous is not None:
            dx = x - self.previous[0]
            dg = -(force - self.previous[1])
            a, b = float(dx @ dg), self.hessian @ dx
            if a > 1e-12 and float(dx @ b) > 1e-12:
                self.hessian += np.outer(dg, dg) / a - np.outer(b, b) / float(dx @ b)
        self.previous = (x.copy(), force.copy())
        eigenvalues, vectors = np.linalg.eigh(self.hessian)
        step = vectors @ ((vectors.T @ force) / np.abs(eigenvalues))
        step = _cap(step * self.mask * min(1.0, 2.0 * self.potim), MAX_QN_DISPLACEMENT)
        self.message = f"BRION: g(F)= {float(force @ force):10.3E} g(S)= {0.0:10.3E} retain N= {1:3d}"
        return (x + step).reshape(-1, 3)


def make_optimizer(ibrion: int, potim: float, mask: np.ndarray):
    if ibrion == 2:
        return ConjugateGradient(potim, mask)
    return QuasiNewton(potim, mask)
