"""The stdin side of VASP's interactive mode, for each protocol variant.

VASP <= 6.3 echoes the new and the old positions; the public lattice patch for 6.3 then asks for
three lattice rows and echoes both lattices; 6.4.1+ prints the atom count instead of an echo
(``ISIF < 3``), or reads a whole POSCAR record (``ISIF >= 3``).
"""

from __future__ import annotations

import sys
from typing import TextIO

import numpy as np

from .config import Variant
from .errors import ProtocolInputError
from .fortran import fortran_f, vector_block

PROMPT = {
    Variant.CLASSIC: "POSITIONS: reading from stdin",
    Variant.LATTICE_PATCH: "POSITIONS: reading from stdin",
    Variant.COUNT_LINE: "POSITIONS: reading from stdin",
    Variant.POSCAR_RECORD: "POSITIONS AND LATTICE: reading from stdin",
}
DONE = {
    Variant.CLASSIC: "POSITIONS: read from stdin",
    Variant.LATTICE_PATCH: "POSITIONS: read from stdin",
    Variant.COUNT_LINE: "POSITIONS: read from stdin",
    Variant.POSCAR_RECORD: "POSITIONS AND LATTICE: read from stdin",
}


class EndOfInput(ProtocolInputError):
    exit_code = 24

    def __init__(self) -> None:
        super().__init__("forrtl: severe (24): end-of-file during read, unit 5, file stdin")


class SyntaxInput(ProtocolInputError):
    exit_code = 59

    def __init__(self, line: str) -> None:
        super().__init__(
            f"forrtl: severe (59): list-directed I/O syntax error, unit 5, file stdin\n"
            f"   (could not read numbers from: {line.strip()[:80]!r})"
        )


class StdinReader:
    """Fortran list-directed reading: blank lines are skipped, numbers may span lines."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdin

    def line(self, skip_blank: bool = True) -> str:
        while True:
            text = self.stream.readline()
            if not text:
                raise EndOfInput()
            if text.strip() or not skip_blank:
                return text

    def floats(self, count: int) -> np.ndarray:
        values: list[float] = []
        while len(values) < count:
            text = self.line()
            try:
                values.extend(float(w.replace("d", "e").replace("D", "e")) for w in text.split())
            except ValueError:
                raise SyntaxInput(text) from None
        if not np.all(np.isfinite(values[:count])):
            raise SyntaxInput("non-finite coordinate")
        return np.array(values[:count])


def read_client_input(variant: Variant, reader: StdinReader, out: TextIO, frac: np.ndarray,
                      lattice: np.ndarray, species: list[str], counts: list[int],
                      initial_frac: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Print the prompt, read the client's structure, print VASP's acknowledgement.

    Returns the new fractional positions and lattice (the lattice only changes where the
    variant streams it). ``initial_frac``: the POSCAR's positions, which VASP <= 6.3 echoes as
    the "old" block of every exchange (not the previous structure); default ``frac``.
    """
    n = len(frac)
    out.write(PROMPT[variant] + "\n")
    out.flush()
    new_lattice = lattice
    if variant is Variant.POSCAR_RECORD:
        new_frac, new_lattice = _read_poscar_record(reader, n, species, counts)
    else:
        new_frac = reader.floats(3 * n).reshape(n, 3)
    if variant in (Variant.CLASSIC, Variant.LATTICE_PATCH):
        out.write(vector_block(new_frac))
        out.write(vector_block(frac if initial_frac is None else initial_frac))
    elif variant is Variant.COUNT_LINE:
        out.write(f"{n:12d}\n")
    out.write(DONE[variant] + "\n")
    if variant is Variant.LATTICE_PATCH:
        out.write("LATTICE: reading from stdin\n")
        out.flush()
        new_lattice = reader.floats(9).reshape(3, 3)
        _check_lattice(new_lattice)
        out.write(lattice_echo(new_lattice, lattice))
        out.write("LATTICE: read from stdin\n")
    return new_frac, new_lattice


def lattice_echo(new: np.ndarray, old: np.ndarray) -> str:
    """What the lattice patch prints after reading a lattice, byte for byte.

    For each of New and Old: a header (``New``, 3 spaces, ``direct lattice vectors``, 19 spaces,
    ``reciprocal lattice vectors``), three rows (3 spaces, the direct vector ``3F13.7``, 3 spaces,
    the reciprocal vector ``3F13.7`` without the 2 pi), an empty line. The public driver counts
    these lines up to ``LATTICE: read from stdin``, so another layout would break it.
    """
    text = ""
    for label, cell in (("New", new), ("Old", old)):
        text += f"{label}   direct lattice vectors{' ' * 19}reciprocal lattice vectors\n"
        reciprocal = np.linalg.inv(cell).T
        for direct_row, reciprocal_row in zip(cell, reciprocal):
            text += ("   " + "".join(fortran_f(float(x), 13, 7) for x in direct_row)
                     + "   " + "".join(fortran_f(float(x), 13, 7) for x in reciprocal_row) + "\n")
        text += "\n"
    return text


def _check_lattice(lattice: np.ndarray) -> None:
    if abs(np.linalg.det(lattice)) < 1e-6:
        raise ProtocolInputError(" ERROR: the triple product of the basis vectors is zero (lattice from stdin)")


def _read_poscar_record(reader: StdinReader, n: int, species: list[str], counts: list[int]
                        ) -> tuple[np.ndarray, np.ndarray]:
    reader.line(skip_blank=False)  # title
    scale = reader.floats(1)[0]
    lattice = reader.floats(9).reshape(3, 3) * scale
    _check_lattice(lattice)
    got_species = reader.line().split()
    got_counts = reader.line().split()
    if got_species != list(species) or got_counts != [str(c) for c in counts]:
        raise ProtocolInputError(
            f" ERROR: POSCAR record on stdin has species {' '.join(got_species)} / "
            f"{' '.join(got_counts)}, expected {' '.join(species)} / {' '.join(map(str, counts))}"
        )
    mode = reader.line().strip()
    if mode[:1] not in ("D", "d"):
        raise ProtocolInputError(f" ERROR: POSCAR record on stdin must use Direct coordinates, got '{mode}'")
    frac = reader.floats(3 * n).reshape(n, 3)
    return frac, lattice
