"""KPOINTS reading: automatic length, Gamma / Monkhorst-Pack grids and explicit lists."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass
class KpointSet:
    """Irreducible k-points in reciprocal-lattice coordinates with normalised weights."""

    comment: str
    style: str  # "Gamma", "Monkhorst-Pack" or "Explicit"
    divisions: tuple[int, int, int] | None
    shift: tuple[float, float, float]
    kpoints: np.ndarray  # (K, 3)
    weights: np.ndarray  # (K,)


def _fold(points: np.ndarray) -> np.ndarray:
    """Map reduced coordinates into (-0.5, 0.5]."""
    folded = points - np.round(points)
    folded[np.isclose(folded, -0.5)] = 0.5
    return np.round(folded, 10)


def _grid(divisions, shift, gamma_centred: bool, time_reversal: bool) -> tuple[np.ndarray, np.ndarray]:
    axes = []
    for n, s in zip(divisions, shift):
        offset = 0.0 if gamma_centred or n % 2 == 1 else 0.5
        axes.append((np.arange(n) + offset + s) / n)
    points = _fold(np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).T)
    if not time_reversal:
        return points, np.full(len(points), 1.0 / len(points))
    weights: dict[tuple, int] = {}
    for p, m in zip(points, _fold(-points)):
        key = max(tuple(p), tuple(m))  # k and -k share one representative
        weights[key] = weights.get(key, 0) + 1
    kpts = np.array(list(weights))
    counts = np.array(list(weights.values()), dtype=float)
    return kpts, counts / counts.sum()


def parse_kpoints(text: str, reciprocal_lengths: np.ndarray, time_reversal: bool = True) -> KpointSet:
    """Parse KPOINTS text. ``reciprocal_lengths`` are |b_i| (1/Angstrom, no 2 pi)."""
    lines = [line for line in text.splitlines()]
    if len(lines) < 3:
        raise InputError("KPOINTS is too short: it needs a comment, a count and a mode line")
    comment = lines[0].strip()
    try:
        count = int(lines[1].split()[0])
    except (ValueError, IndexError):
        raise InputError(f"KPOINTS line 2: expected the number of k-points, got '{lines[1].strip()}'") from None
    mode = lines[2].strip()[:1].upper()
    if count == 0 and mode == "A":
        try:
            length = float(lines[3].split()[0])
        except (ValueError, IndexError):
            raise InputError("KPOINTS: fully automatic mode needs a length on line 4") from None
        divisions = tuple(max(1, int(length * b + 0.5)) for b in reciprocal_lengths)
        kpts, weights = _grid(divisions, (0.0, 0.0, 0.0), True, time_reversal)
        return KpointSet(comment, "Gamma", divisions, (0.0, 0.0, 0.0), kpts, weights)
    if count == 0 and mode in ("G", "M"):
        try:
            divisions = tuple(int(w) for w in lines[3].split()[:3])
        except (ValueError, IndexError):
            raise InputError("KPOINTS line 4: expected three subdivisions") from None
        if len(divisions) != 3 or min(divisions) < 1:
            raise InputError("KPOINTS line 4: expected three positive subdivisions")
        shift = (0.0, 0.0, 0.0)
        if len(lines) > 4 and lines[4].split():
            try:
                shift = tuple(float(w) for w in lines[4].split()[:3])
            except ValueError:
                raise InputError("KPOINTS line 5: expected three shift values") from None
        kpts, weights = _grid(divisions, shift, mode == "G", time_reversal)
        style = "Gamma" if mode == "G" else "Monkhorst-Pack"
        return KpointSet(comment, style, divisions, shift, kpts, weights)
    if count > 0:
        cartesian = mode in ("C", "K")
        rows = []
        for k in range(count):
            try:
                words = lines[3 + k].split()
                rows.append([float(w) for w in words[:4]] if len(words) >= 4 else [*map(float, words[:3]), 1.0])
            except (ValueError, IndexError):
                raise InputError(f"KPOINTS: cannot read k-point {k + 1} of {count}") from None
        data = np.array(rows)
        kpts = data[:, :3]
        if cartesian:
            kpts = kpts / np.where(reciprocal_lengths > 0, reciprocal_lengths, 1.0)
        return KpointSet(comment, "Explicit", None, (0.0, 0.0, 0.0), kpts, data[:, 3] / data[:, 3].sum())
    raise InputError(f"KPOINTS: unsupported mode '{lines[2].strip()}' (use Gamma, Monkhorst-Pack, Auto or a list)")


def from_kspacing(kspacing: float, reciprocal_lengths: np.ndarray, gamma: bool = True) -> KpointSet:
    """VASP's KSPACING rule: N_i = max(1, ceil(|b_i| 2 pi / KSPACING))."""
    divisions = tuple(max(1, int(np.ceil(b * 2 * np.pi / kspacing - 1e-8))) for b in reciprocal_lengths)
    kpts, weights = _grid(divisions, (0.0, 0.0, 0.0), gamma, True)
    return KpointSet("KSPACING", "Gamma" if gamma else "Monkhorst-Pack", divisions, (0.0, 0.0, 0.0), kpts, weights)
