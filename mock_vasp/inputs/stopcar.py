"""STOPCAR: the file a user or driver writes during a run to ask VASP to stop.

``LABORT = .TRUE.`` stops after the current electronic step, ``LSTOP = .TRUE.`` after the current
ionic step. A STOPCAR without a valid tag is ignored, as VASP does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..errors import MockVaspError
from .incar import Incar

StopRequest = Literal["LABORT", "LSTOP"]

STOPCAR = "STOPCAR"


def parse_stopcar(text: str) -> StopRequest | None:
    """The stop a STOPCAR's text asks for (``LABORT`` wins over ``LSTOP``), or None."""
    try:
        stopcar = Incar.from_text(text)
        if stopcar.get_bool("LABORT"):
            return "LABORT"
        if stopcar.get_bool("LSTOP"):
            return "LSTOP"
    except MockVaspError:
        return None
    return None


def read_stopcar(directory: Path) -> StopRequest | None:
    """The stop requested by ``directory/STOPCAR``, or None when there is none (or it cannot be read)."""
    try:
        return parse_stopcar((directory / STOPCAR).read_text())
    except OSError:
        return None
