"""Encoding the client's side: what is written to VASP's stdin after each prompt.

VASP reads its stdin list-directed, so the widths only need to carry the precision: fractional
positions as ``3F20.16`` rows, lattice vectors (Angstrom) as ``3F20.14`` rows.

* ``POSITIONS``: one row of fractional coordinates per atom, in VASP's (POSCAR) order;
* ``LATTICE`` (6.3 with the lattice patch, right after the positions): the three lattice vectors;
* ``POSITIONS AND LATTICE`` (>= 6.4.1 with ISIF >= 3): a whole POSCAR record, with no selective
  dynamics and no velocities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .events import PromptKind


def format_positions(frac: np.ndarray) -> str:
    """Fractional coordinates, one atom a line."""
    return "".join(f"{x:20.16f}{y:20.16f}{z:20.16f}\n" for x, y, z in frac)


def format_lattice(lattice: np.ndarray) -> str:
    """Three lattice vectors in Angstrom, one a line."""
    return "".join(f"{x:20.14f}{y:20.14f}{z:20.14f}\n" for x, y, z in lattice)


def format_poscar_record(frac: np.ndarray, lattice: np.ndarray, species: Sequence[str],
                         counts: Sequence[int]) -> str:
    """The record VASP >= 6.4.1 reads with ISIF >= 3: no selective dynamics, no velocities."""
    return (
        "vasp_interactive\n1.0\n" + format_lattice(lattice) + " ".join(species) + "\n"
        + " ".join(str(c) for c in counts) + "\nDirect\n" + format_positions(frac)
    )


@dataclass(frozen=True, eq=False)
class StructureReply:
    """One structure in VASP's atom order, and how it answers each prompt."""

    frac: np.ndarray
    lattice: np.ndarray
    species: tuple[str, ...]
    counts: tuple[int, ...]

    def to(self, prompt: PromptKind) -> str:
        """The text to write to VASP's stdin after ``prompt``."""
        if prompt is PromptKind.POSITIONS:
            return format_positions(self.frac)
        if prompt is PromptKind.LATTICE:
            return format_lattice(self.lattice)
        return format_poscar_record(self.frac, self.lattice, self.species, self.counts)
