"""A BFGS Hessian built from parent points only: replay their positions and forces through the update."""

from __future__ import annotations

import numpy as np
from ase.optimize import BFGS

from .learner import constrained
from .surrogates.base import LabelledPoint


def rebuild_bfgs_hessian(optimizer: BFGS, points: list[LabelledPoint]) -> None:
    """Start the BFGS Hessian afresh and replay the parent points through the update.

    Positions and *constrained* forces (as the optimizer sees them) are used, in the order given;
    the optimizer's reference point becomes the last point. Pairs that fail the curvature
    condition are left out (:func:`curvature_is_positive`).
    """
    if not points:
        return
    ndofs = 3 * len(points[0].atoms)
    # a fresh H0: ASE's BFGS updates the Hessian in place, and its first Hessian *is* H0
    optimizer.H0 = np.eye(ndofs) * getattr(optimizer, "alpha", 70.0)
    if hasattr(optimizer, "state"):
        optimizer.state = None
    else:  # older ASE
        optimizer.H = None
    previous = None
    for point in points:
        position = point.atoms.positions.ravel().copy()
        forces = constrained(point.atoms, np.asarray(point.forces)).ravel()
        if previous is None:
            optimizer.update(position, forces, position, forces)
        elif curvature_is_positive(position - previous[0], forces - previous[1]):
            optimizer.update(position, forces, *previous)
        previous = (position, forces)
    optimizer.pos0, optimizer.forces0 = previous


def curvature_is_positive(step: np.ndarray, force_change: np.ndarray) -> bool:
    """BFGS's curvature condition for one pair of points: the forces fell along the step.

    ASE's BFGS applies every update; a pair with the forces *rising* along the step (a concave
    stretch, or two points that differ by noise) makes its Hessian indefinite there, and the steps
    that follow are dominated by that spurious direction. The replay leaves such pairs out.
    """
    curvature = -float(step @ force_change)
    return curvature > 1e-6 * float(np.linalg.norm(step) * np.linalg.norm(force_change))
