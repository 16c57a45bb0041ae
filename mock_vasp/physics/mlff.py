"""The fake's machine-learned force field (``ML_LMLFF = .TRUE.``, ``ML_MODE = train``).

A deliberately simple model with an honest error estimate, so that drivers meet what real VASP
does with its force field on: every ionic step is first predicted by the force field (an ML
block in OUTCAR); where the force field's own error estimate is above ``ML_CTIFOR`` (and on the
first ``ML_NDFT_START`` steps) VASP also runs DFT (the SCF lines and the ordinary block) and
learns the new structure; otherwise the step's result is the prediction and no SCF runs.

The model: a quadratic expansion around the nearest training structure, with its DFT energy and
forces and an isotropic stiffness (the force change per displacement between the two newest
training structures, at least ``ML_STIFFNESS``); the stress is carried over. The force error is
estimated as that stiffness x the largest atomic displacement from the structure, and the real
error grows with that displacement too. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

MlMode = Literal["train", "run", "refit", "select"]
ML_STIFFNESS = 1.0  # eV/A^2: a typical bond stiffness scale, turns a displacement into a force error


@dataclass(frozen=True)
class MlffSettings:
    enabled: bool = False
    mode: MlMode = "train"  # only "train" is emulated: "run" needs an ML_AB file the fake does not write
    error_threshold: float = 0.02  # ML_CTIFOR, eV/A
    dft_start_steps: int = 2  # steps computed by DFT before the force field is trusted at all

    @classmethod
    def from_incar(cls, incar) -> MlffSettings:
        enabled = incar.get_bool("ML_LMLFF", False)
        mode = (incar.get_str("ML_MODE") or "").strip().lower()
        if not mode:
            mode = {0: "train", 1: "train", 2: "run"}.get(incar.get_int("ML_ISTART", 0), "train")
        if mode not in ("train", "run", "refit", "select"):
            mode = "train" if not enabled else mode  # an unknown mode is reported by the job's check
        return cls(enabled=enabled, mode=mode, error_threshold=incar.get_float("ML_CTIFOR", 0.02),
                   dft_start_steps=max(1, incar.get_int("ML_NDFT_START", 2)))


@dataclass(frozen=True)
class MlPrediction:
    energy: float
    forces: np.ndarray
    stress_kb: np.ndarray | None
    error: float  # estimated largest force error, eV/A


@dataclass
class ForceField:
    """Training structures (Cartesian, VASP order) with their DFT energy, forces and stress."""

    settings: MlffSettings
    positions: list[np.ndarray] = field(default_factory=list)
    energies: list[float] = field(default_factory=list)
    forces: list[np.ndarray] = field(default_factory=list)
    stresses: list[np.ndarray | None] = field(default_factory=list)

    def predict(self, cartesian: np.ndarray, natoms: int) -> MlPrediction:
        """An untrained force field predicts zeros with an infinite error (VASP prints zeros too)."""
        if not self.positions:
            return MlPrediction(0.0, np.zeros((natoms, 3)), np.zeros(6), float("inf"))
        moves = [np.linalg.norm(cartesian - known, axis=1).max() for known in self.positions]
        nearest = int(np.argmin(moves))
        displacement = cartesian - self.positions[nearest]
        stiffness = self.stiffness()
        forces = self.forces[nearest] - stiffness * displacement
        energy = (self.energies[nearest] - float(np.sum(self.forces[nearest] * displacement))
                  + 0.5 * stiffness * float(np.sum(displacement**2)))
        return MlPrediction(energy, forces, self.stresses[nearest], stiffness * float(moves[nearest]))

    def stiffness(self) -> float:
        """eV/A^2: force change per displacement between the two newest training structures.

        Local, as a force field's error is: a stiff bond (C-O) far from the minimum makes a move
        costly in force error; near a minimum, where the optimizer's steps are short, it is not.
        """
        if len(self.positions) < 2:
            return ML_STIFFNESS
        moved = float(np.linalg.norm(self.positions[-1] - self.positions[-2], axis=1).max())
        if moved < 1e-6:
            return ML_STIFFNESS
        change = float(np.linalg.norm(self.forces[-1] - self.forces[-2], axis=1).max())
        return max(ML_STIFFNESS, change / moved)

    def needs_dft(self, prediction: MlPrediction, step: int) -> bool:
        return step <= self.settings.dft_start_steps or prediction.error > self.settings.error_threshold

    def learn(self, cartesian: np.ndarray, energy: float, forces: np.ndarray, stress_kb: np.ndarray | None) -> None:
        self.positions.append(cartesian.copy())
        self.energies.append(float(energy))
        self.forces.append(np.array(forces, copy=True))
        self.stresses.append(None if stress_kb is None else np.array(stress_kb, copy=True))
