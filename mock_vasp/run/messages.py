"""The fixed texts VASP prints on stdout: start-up lines, the ERROR and WARNING boxes, stop notices.

Drivers match these byte for byte, so they are kept in VASP's layout. Pure text, no I/O.
"""

from __future__ import annotations

import textwrap

from ..config import EmulatedVersion

HARD_STOP = " hard stop encountered!  aborting job ..."
SOFT_STOP = " soft stop encountered!  aborting job ..."
STOP_REACHED = " reached required accuracy - stopping structural energy minimisation"

ERROR_BOX = """ -----------------------------------------------------------------------------
|                                                                             |
|     EEEEEEE  RRRRRR   RRRRRR   OOOOOOO  RRRRRR      ###     ###     ###     |
|     E        R     R  R     R  O     O  R     R     ###     ###     ###     |
|     E        R     R  R     R  O     O  R     R     ###     ###     ###     |
|     EEEEE    RRRRRR   RRRRRR   O     O  RRRRRR       #       #       #      |
|     E        R   R    R   R    O     O  R   R                               |
|     E        R    R   R    R   O     O  R    R      ###     ###     ###     |
|     EEEEEEE  R     R  R     R  OOOOOOO  R     R     ###     ###     ###     |
|                                                                             |
{body}|                                                                             |
|       ---->  I REFUSE TO CONTINUE WITH THIS SICK JOB ... BYE!!! <----       |
|                                                                             |
 -----------------------------------------------------------------------------
"""

NELM_WARNING = """ -----------------------------------------------------------------------------
|                                                                             |
|           W    W    AA    RRRRR   N    N  II  N    N   GGGG   !!!           |
|           W    W   A  A   R    R  NN   N  II  NN   N  G    G  !!!           |
|           W    W  A    A  R    R  N N  N  II  N N  N  G       !!!           |
|           W WW W  AAAAAA  RRRRR   N  N N  II  N  N N  G  GGG   !            |
|           WW  WW  A    A  R   R   N   NN  II  N   NN  G    G                |
|           W    W  A    A  R    R  N    N  II  N    N   GGGG   !!!           |
|                                                                             |
|     The electronic self-consistency was not achieved in the given           |
|     number of steps (NELM). The forces and other quantities evaluated       |
|     might not be reliable so examine the results carefully.                 |
|                                                                             |
 -----------------------------------------------------------------------------"""


def error_box(message: str) -> str:
    """``message`` inside VASP's ERROR box, wrapped to its 71-column body."""
    lines = []
    for paragraph in message.splitlines() or [""]:
        lines.extend(textwrap.wrap(paragraph.strip(), 71) or [""])
    body = "".join(f"|     {line:<72s}|\n" for line in lines)
    return ERROR_BOX.format(body=body)


def preamble(version: EmulatedVersion | None, ranks: int) -> list[str]:
    """The first lines of a run, before any input is read (the version line moved first in 6.3)."""
    running = [f" running on {ranks:4d} total cores",
               f" distrk:  each k-point on {ranks:4d} cores,    1 groups",
               f" distr:  one band on {1:4d} cores, {ranks:4d} groups"]
    if version is not None and version.number >= (6, 3, 0):
        return [version.header(), f" running {ranks:4d} mpi-ranks, with    1 threads/rank",
                *running[1:], " using from now: INCAR"]
    header = version.header() if version is not None else " vasp.6.4.2 20Jul23 (mock-vasp) complex"
    return [*running, " using from now: INCAR", header]


def setup_lines(species: list[str], natoms: int, wavecar_read: bool) -> list[str]:
    """What VASP prints between reading its inputs and the first ionic step."""
    return [
        " POSCAR found type information on POSCAR " + " ".join(species) + " ",
        f" POSCAR found : {len(species):2d} types and {natoms:7d} ions",
        " scaLAPACK will be used",
        " LDA part: xc-table for Pade appr. of Perdew",
        " POSCAR, INCAR and KPOINTS ok, starting setup",
        " FFT: planning ...",
        " WAVECAR read" if wavecar_read else " WAVECAR not read",
        " entering main loop",
    ]
