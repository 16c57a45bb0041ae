"""POSCAR / CONTCAR reading and writing (VASP 5 format)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..fortran import block


@dataclass
class Structure:
    """A periodic structure in VASP's terms: species blocks in file order."""

    comment: str
    lattice: np.ndarray  # (3, 3) rows are lattice vectors in Angstrom
    species: list[str]
    counts: list[int]
    frac: np.ndarray  # (N, 3) fractional coordinates
    selective: np.ndarray | None = None  # (N, 3) bool, True = free to move

    @property
    def natoms(self) -> int:
        return int(sum(self.counts))

    @property
    def symbols(self) -> list[str]:
        return [s for s, n in zip(self.species, self.counts) for _ in range(n)]

    @property
    def cartesian(self) -> np.ndarray:
        return self.frac @ self.lattice

    def free_mask(self) -> np.ndarray:
        """(N, 3) bool array: which Cartesian components may move."""
        if self.selective is None:
            return np.ones((self.natoms, 3), dtype=bool)
        return self.selective.copy()


def _floats(line: str, count: int, what: str, number: int) -> list[float]:
    words = line.split()
    if len(words) < count:
        raise InputError(f"POSCAR line {number}: expected {count} numbers for {what}, got '{line.strip()}'")
    try:
        return [float(w) for w in words[:count]]
    except ValueError:
        raise InputError(f"POSCAR line {number}: cannot read {what} from '{line.strip()}'") from None


def parse_poscar(text: str, potcar_species: list[str] | None = None) -> Structure:
    """Parse POSCAR text. VASP 4 files (no species line) take species from the POTCAR."""
    lines = text.splitlines()
    if len(lines) < 8:
        raise InputError("POSCAR is too short: it needs a comment, scale, lattice, counts and positions")
    comment = lines[0].strip()
    scale_words = _floats(lines[1], 1, "the scaling factor", 2)
    lattice = np.array([_floats(lines[i], 3, "a lattice vector", i + 1) for i in (2, 3, 4)])
    scales = lines[1].split()
    factor = np.ones(3)
    if len(scales) >= 3:
        factor = np.array(_floats(lines[1], 3, "the scaling factors", 2))
    elif scale_words[0] < 0:
        volume = abs(np.linalg.det(lattice))
        factor[:] = (abs(scale_words[0]) / volume) ** (1.0 / 3.0)
    else:
        factor[:] = scale_words[0]
    lattice = lattice * factor[:, None]
    if abs(np.linalg.det(lattice)) < 1e-8:
        raise InputError("POSCAR: the lattice vectors are linearly dependent (zero cell volume)")

    cursor = 5
    words = lines[cursor].split()
    if words and all(w.isdigit() for w in words):
        if potcar_species is None:
            raise InputError("POSCAR has no species line (VASP 4 format) and no POTCAR to take it from")
        species = list(potcar_species[: len(words)])
    else:
        species = [w.split("/")[0].split("_")[0] for w in words]
        cursor += 1
    try:
        counts = [int(w) for w in lines[cursor].split()]
    except (ValueError, IndexError):
        raise InputError(f"POSCAR line {cursor + 1}: expected the number of atoms per species") from None
    if len(counts) != len(species):
        raise InputError(
            f"POSCAR: {len(species)} species ({' '.join(species)}) but {len(counts)} counts"
        )
    if any(n <= 0 for n in counts):
        raise InputError("POSCAR: every species count must be positive")
    cursor += 1
    selective = False
    if lines[cursor].strip()[:1] in ("S", "s"):
        selective = True
        cursor += 1
    mode = lines[cursor].strip()[:1].lower()
    if mode not in ("d", "c", "k"):
        raise InputError(f"POSCAR line {cursor + 1}: expected 'Direct' or 'Cartesian', got '{lines[cursor].strip()}'")
    cartesian = mode in ("c", "k")
    cursor += 1
    natoms = sum(counts)
    if len(lines) < cursor + natoms:
        raise InputError(f"POSCAR: expected {natoms} position lines, found {len(lines) - cursor}")
    coords = np.empty((natoms, 3))
    flags = np.ones((natoms, 3), dtype=bool)
    for k in range(natoms):
        line = lines[cursor + k]
        coords[k] = _floats(line, 3, "a position", cursor + k + 1)
        if selective:
            words = line.split()
            if len(words) < 6:
                raise InputError(f"POSCAR line {cursor + k + 1}: selective dynamics needs three T/F flags")
            flags[k] = [w.upper().startswith("T") for w in words[3:6]]
    if cartesian:
        coords = np.linalg.solve(lattice.T, (coords * factor).T).T
    return Structure(comment, lattice, species, counts, coords, flags if selective else None)


def read_poscar(path, potcar_species: list[str] | None = None) -> Structure:
    try:
        with open(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        raise InputError(f"No POSCAR found ({path}): VASP needs the structure in POSCAR") from None
    return parse_poscar(text, potcar_species)


def format_poscar(structure: Structure, frac: np.ndarray | None = None) -> str:
    """POSCAR text in VASP's CONTCAR layout."""
    frac = structure.frac if frac is None else frac
    out = [structure.comment or "mock-vasp", "   1.00000000000000"]
    for row in structure.lattice:
        out.append("    " + "".join(f"{x:22.16f}" for x in row))
    out.append("   " + "".join(f"{s:>5s}" for s in structure.species))
    out.append("   " + "".join(f"{n:>5d}" for n in structure.counts))
    if structure.selective is not None:
        out.append("Selective dynamics")
    out.append("Direct")
    text = "\n".join(out) + "\n"
    if structure.selective is None:
        return text + block(frac, "%20.16f%20.16f%20.16f")
    flags = ["".join("   T" if f else "   F" for f in row) for row in structure.selective]
    rows = block(frac, "%20.16f%20.16f%20.16f").splitlines()
    return text + "".join(row + flag + "\n" for row, flag in zip(rows, flags))
