"""INCAR reader with VASP's quirks.

VASP accepts ``TAG = value`` pairs, ``#`` and ``!`` comments, several pairs on one line
separated by ``;``, Fortran booleans (``.TRUE.``, ``T``, ``.F.``...) and repeat counts in
lists (``MAGMOM = 4*0.6``). ASE's reader drops everything after the first ``;`` pair, so the
fake VASP has its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import InputError

_TAG = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_TRUE = {".TRUE.", "T", ".T.", "TRUE"}
_FALSE = {".FALSE.", "F", ".F.", "FALSE"}


def _strip_comment(line: str) -> str:
    cut = len(line)
    for mark in ("#", "!"):
        pos = line.find(mark)
        if pos >= 0:
            cut = min(cut, pos)
    return line[:cut]


def _split_assignments(text: str) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        for part in _strip_comment(raw).split(";"):
            if part.strip():
                yield number, part


@dataclass
class Incar:
    """Parsed INCAR: raw string values by upper-case tag, with typed getters."""

    values: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_text(cls, text: str) -> Incar:
        values: dict[str, str] = {}
        for number, part in _split_assignments(text):
            if "=" not in part:
                raise InputError(
                    f"INCAR line {number}: '{part.strip()}' is not of the form TAG = value; "
                    "fix or remove the line"
                )
            tag, value = part.split("=", 1)
            tag = tag.strip().upper()
            if not _TAG.match(tag):
                raise InputError(f"INCAR line {number}: '{tag}' is not a valid tag name")
            value = value.strip()
            if not value:
                raise InputError(f"INCAR line {number}: tag {tag} has no value")
            values[tag] = value
        return cls(values)

    def __contains__(self, tag: str) -> bool:
        return tag.upper() in self.values

    def raw(self, tag: str) -> str | None:
        return self.values.get(tag.upper())

    def get_str(self, tag: str, default: str | None = None) -> str | None:
        value = self.raw(tag)
        return default if value is None else value.split()[0].strip("'\"")

    def get_bool(self, tag: str, default: bool = False) -> bool:
        value = self.raw(tag)
        if value is None:
            return default
        word = value.split()[0].upper()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise InputError(f"INCAR: {tag} = {value} is not a logical value (use .TRUE. or .FALSE.)")

    def get_float(self, tag: str, default: float | None = None) -> float | None:
        value = self.raw(tag)
        if value is None:
            return default
        try:
            return float(value.split()[0].replace("d", "e").replace("D", "e"))
        except ValueError:
            raise InputError(f"INCAR: {tag} = {value} is not a number") from None

    def get_int(self, tag: str, default: int | None = None) -> int | None:
        value = self.raw(tag)
        if value is None:
            return default
        word = value.split()[0]
        try:
            number = float(word)
        except ValueError:
            raise InputError(f"INCAR: {tag} = {value} is not an integer") from None
        if number != int(number):
            raise InputError(f"INCAR: {tag} = {value} is not an integer")
        return int(number)

    def get_floats(self, tag: str) -> list[float] | None:
        """A list value with VASP's ``n*x`` repeats expanded."""
        value = self.raw(tag)
        if value is None:
            return None
        numbers: list[float] = []
        for word in value.split():
            count, _, item = word.rpartition("*")
            try:
                repeat = int(count) if count else 1
                numbers.extend([float(item)] * repeat)
            except ValueError:
                raise InputError(f"INCAR: {tag} = {value}: '{word}' is not a number") from None
        return numbers


def read_incar(path) -> Incar:
    with open(path) as handle:
        return Incar.from_text(handle.read())
