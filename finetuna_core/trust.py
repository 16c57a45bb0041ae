"""The learner's trust region: how far the surrogate may carry the structure before the parent checks.

After every parent point the radius is updated from the classic trust-region ratio

    rho = (parent energy change) / (surrogate-predicted energy change)

over the segment that led there, both measured from the best parent point the segment started
from, with the surrogate that drove the segment (before it was refit on the new point). Parent
energies decide; the surrogate's own energy scale never does (its absolute energies after a
forces-only refit can be far off, its energy *differences* along a short path follow its forces).

* the parent energy rose by more than ``uphill_tolerance``, or rose at all while the parent fmax
  rose too (worse on both counts: accepting such a point lets a run shuttle between two points
  inside the tolerance for ever): the segment is rejected (the driver returns to the best point)
  and the radius shrinks to half the length of the rejected segment, not below ``minimum`` unless
  the rejected point itself was closer than that (then to half its distance: the next segment
  must end short of it);
* rho < ``shrink_below``: the surrogate promised much more than the parent delivered: shrink, to
  no less than ``minimum`` (so a radius a rejection put below the minimum comes back up to it:
  keeping it below instead cost OH-Ir100 of the generated set 81 -> 90 parent calls);
* rho > ``grow_above`` and the segment was stopped by the radius: the surrogate is trusted
  further: grow (up to ``maximum``). (Growing from rho 0.5, since a fine-tuned surrogate often
  promises a little more than the parent gives on long descents, was measured and not taken: OC20
  138 -> 132 calls, all accurate, but on a rippled well the longer early segments carried the
  atom over a ripple into a basin 32 meV above where BFGS on the parent ends.)
* otherwise, or when both changes are within ``energy_noise``: keep. The band is a few times the
  parent's SCF precision (VASP's energies are converged to EDIFF, 1e-4 eV in the benchmarks): at
  2 meV, a flat valley walked at 0.05-0.075 A, 1.2 meV per segment as the model predicted, never
  grew the radius (CHO-Au3Zn100: 36 such calls); keep it at least 5 x EDIFF (the learner widens
  it so for a parent that reports its EDIFF: :meth:`TrustRegion.for_parent_precision`). The
  rejection rules are not widened: a rejection in the noise costs a call, an accepted rise could
  cost the answer. (Growing after two such segments in a row that went downhill as predicted, to
  walk soft descents worth a few meV per segment faster, was measured and saved nothing: the
  longer segments left the noise with ratios of 0.1-0.6 and shrank again; CHO-Au3Zn100 47 -> 47
  calls, OH-Ir100 81 -> 84, EMT set 217 -> 217.)

Pure: no I/O, no surrogate, no parent; testable on numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Verdict = Literal["first", "rejected", "shrink", "grow", "keep"]
# why a point was rejected: more than the uphill tolerance above the start, or above it within the
# tolerance with a larger parent fmax
Rejection = Literal["uphill", "not-better"]
#: the noise band is at least this many times the parent's own SCF energy tolerance
NOISE_PER_SCF_TOLERANCE = 5.0


@dataclass(frozen=True)
class TrustRegion:
    """Settings of the adaptive trust radius (Angstrom, largest move of a free atom)."""

    initial: float = 0.2  # ASE BFGS's own step limit: where parent-only BFGS is known to be safe
    minimum: float = 0.05
    maximum: float = 0.5
    shrink_below: float = 0.25
    grow_above: float = 0.75
    shrink_factor: float = 0.5
    grow_factor: float = 1.5
    energy_noise: float = 5e-4  # eV: changes this small say nothing about the surrogate (>= 5 x EDIFF)
    uphill_tolerance: float = 1e-3  # eV: a parent energy this far above the best point rejects the segment
    # after a rejection closer than ``minimum`` the radius goes below it, to half that distance (the
    # parent's well is that narrow there: the next segment must end short of the rejected point)
    rejection_floor: float = 0.005
    # reject a point above the start (within the uphill tolerance) whose parent fmax rose too
    reject_worse_forces: bool = True

    def for_parent_precision(self, scf_tolerance: float | None) -> TrustRegion:
        """These settings for a parent whose energies are converged to ``scf_tolerance`` (eV; VASP's EDIFF).

        The noise band becomes ``NOISE_PER_SCF_TOLERANCE`` times that where this is wider (a VASP run
        with EDIFF = 1e-3 gets a 5 meV band); None (a parent that does not say, EMT) keeps them.
        """
        if scf_tolerance is None or NOISE_PER_SCF_TOLERANCE * scf_tolerance <= self.energy_noise:
            return self
        return replace(self, energy_noise=NOISE_PER_SCF_TOLERANCE * scf_tolerance)

    def __post_init__(self) -> None:
        if not 0 < self.rejection_floor <= self.minimum:
            raise ValueError(f"trust region needs 0 < rejection_floor <= minimum, got {self.rejection_floor}")
        if not 0 < self.minimum <= self.initial <= self.maximum:
            raise ValueError(f"trust region needs 0 < minimum <= initial <= maximum, got {self.minimum}, "
                             f"{self.initial}, {self.maximum}")
        if not 0 < self.shrink_factor < 1 < self.grow_factor:
            raise ValueError("trust region needs 0 < shrink_factor < 1 < grow_factor")
        if not 0 <= self.shrink_below < self.grow_above:
            raise ValueError("trust region needs 0 <= shrink_below < grow_above")


@dataclass(frozen=True)
class TrustUpdate:
    """What one parent point did to the radius (logged with the point)."""

    verdict: Verdict
    radius: float  # the radius after this point
    ratio: float | None  # rho, where both changes were above the noise
    parent_change: float | None  # parent energy change from the segment's start (eV)
    predicted_change: float | None  # surrogate-predicted change over the same segment (eV)
    rejection: Rejection | None = None  # why, for a "rejected" verdict


def update_radius(settings: TrustRegion, radius: float, parent_change: float | None,
                  predicted_change: float | None, segment_length: float,
                  start_fmax: float | None = None, new_fmax: float | None = None) -> TrustUpdate:
    """The radius after a parent point (see the module docstring).

    ``parent_change``/``predicted_change`` are None for the first parent point of a run;
    ``segment_length`` is the largest free-atom move from the segment's start; ``start_fmax`` and
    ``new_fmax`` are the parent fmax at the segment's start and at the new point (when given, a
    point above the start within the uphill tolerance is rejected if its fmax is larger too).
    """
    if parent_change is None or predicted_change is None:
        return TrustUpdate("first", radius, None, parent_change, predicted_change)
    not_better = (settings.reject_worse_forces and parent_change > 0 and start_fmax is not None
                  and new_fmax is not None and new_fmax > start_fmax)
    uphill = parent_change > settings.uphill_tolerance
    if uphill or not_better:
        shrunk = max(settings.minimum, settings.shrink_factor * min(radius, segment_length))
        # The minimum would let the next segment end where this one did. A segment stopped by the
        # radius has a length equal to it up to rounding, hence the tolerance.
        if shrunk >= (1.0 - 1e-6) * segment_length:
            shrunk = max(settings.rejection_floor, settings.shrink_factor * segment_length)
        return TrustUpdate("rejected", shrunk, None, parent_change, predicted_change,
                           "uphill" if uphill else "not-better")
    if abs(predicted_change) < settings.energy_noise and abs(parent_change) < settings.energy_noise:
        return TrustUpdate("keep", radius, None, parent_change, predicted_change)
    if predicted_change >= 0:  # the surrogate predicted no descent but the parent went down
        return TrustUpdate("keep", radius, None, parent_change, predicted_change)
    ratio = parent_change / predicted_change
    if ratio < settings.shrink_below:
        return TrustUpdate("shrink", max(settings.minimum, settings.shrink_factor * radius), ratio,
                           parent_change, predicted_change)
    if ratio > settings.grow_above and segment_length >= 0.9 * radius:
        return TrustUpdate("grow", min(settings.maximum, settings.grow_factor * radius), ratio,
                           parent_change, predicted_change)
    return TrustUpdate("keep", radius, ratio, parent_change, predicted_change)
