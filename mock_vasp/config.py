"""Run settings of the fake VASP: emulated version, backend, file buffering and fault switches.

Sources, later ones winning: defaults, environment variables ``MOCK_VASP_<NAME>``, a JSON file
named by ``MOCK_VASP_CONFIG``, and ``mock_vasp.json`` in the run directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import InputError

CONFIG_FILE = "mock_vasp.json"


class Variant(str, Enum):
    """The interactive stdin protocol of a VASP version (what follows the prompt, see ``interactive.py``)."""

    CLASSIC = "classic"  # <= 6.3: echo of new and old positions
    LATTICE_PATCH = "lattice-patch"  # 6.3 + public patch: separate LATTICE prompt
    COUNT_LINE = "count-line"  # >= 6.4.1, ISIF < 3: atom-count line, no echo
    POSCAR_RECORD = "poscar-record"  # >= 6.4.1, ISIF >= 3: whole POSCAR record


_BUILD_DATES = {
    "5.4.4": "5.4.4.18Apr17-6-g9f103f2a35",
    "6.1.2": "6.1.2 22Jul20",
    "6.2.1": "6.2.1 16May21",
    "6.3.2": "6.3.2 27Jun22",
    "6.4.1": "6.4.1 07Apr23",
    "6.4.2": "6.4.2 20Jul23",
    "6.4.3": "6.4.3 19Mar24",
    "6.5.1": "6.5.1 16Mar25",
}


@dataclass(frozen=True)
class EmulatedVersion:
    number: tuple[int, int, int]
    lattice_patch: bool = False

    @classmethod
    def parse(cls, text: str) -> EmulatedVersion:
        base, _, suffix = text.strip().partition("+")
        try:
            parts = tuple(int(p) for p in base.split("."))
        except ValueError:
            raise InputError(f"mock-vasp: version '{text}' is not of the form X.Y.Z[+lattice]") from None
        if len(parts) != 3:
            raise InputError(f"mock-vasp: version '{text}' is not of the form X.Y.Z[+lattice]")
        if suffix not in ("", "lattice"):
            raise InputError(f"mock-vasp: unknown version suffix '+{suffix}' (only +lattice)")
        if suffix and parts >= (6, 4, 1):
            raise InputError("mock-vasp: the lattice patch exists for VASP <= 6.3 only")
        return cls(parts, bool(suffix))  # type: ignore[arg-type]

    @property
    def text(self) -> str:
        return ".".join(str(p) for p in self.number)

    def header(self) -> str:
        """The version line VASP prints first (drivers match ``vasp\\.(\\S+)``)."""
        label = _BUILD_DATES.get(self.text, f"{self.text} 01Jan24")
        return f" vasp.{label} (build Nov 25 2026 02:00:00) complex"

    def variant(self, isif: int) -> Variant:
        if self.number >= (6, 4, 1):
            return Variant.POSCAR_RECORD if isif >= 3 else Variant.COUNT_LINE
        return Variant.LATTICE_PATCH if self.lattice_patch else Variant.CLASSIC


@dataclass
class Faults:
    """Switches that make the fake VASP misbehave the way real runs do. Steps count from 1."""

    crash_at_step: int | None = None
    crash_error: str = "zbrent"  # key of ERROR_MESSAGES
    hang_at_step: int | None = None
    signal_at_step: int | None = None
    signal: str = "SIGSEGV"
    garbage_at_step: int | None = None
    garbage: str = "noise"  # "noise" lines or "overflow" (asterisks in the forces)
    no_convergence_from_step: int | None = None
    slow_step_seconds: float = 0.0
    stderr_flood_bytes: int = 0
    stderr_flood_at_step: int = 1


# Messages as VASP prints them (also the strings custodian and our driver recognise).
ERROR_MESSAGES = {
    "zbrent": " ZBRENT: fatal error in bracketing\n     please rerun with smaller EDIFF, or copy CONTCAR\n"
              "     to POSCAR and continue",
    "edddav": " Error EDDDAV: Call to ZHEGV failed. Returncode =   7 1  16",
    "subspace": " WARNING: Sub-Space-Matrix is not hermitian in DAV    4  -7.3E-03\n"
                " Error EDDDAV: Call to ZHEGV failed. Returncode =   7 1  16",
    "posmap": " POSMAP internal error: symmetry equivalent atom not found,",
    "brmix": " BRMIX: very serious problems\n the old and the new charge density differ",
    "eddrmm": " WARNING in EDDRMM: call to ZHEGV failed, returncode =   6 3      40",
    "pricel": " internal error in subroutine PRICEL (probably precision problem, try to change SYMPREC in INCAR ?):",
    "distance": " The distance between some ions is very small. Please check the nearest-neighbor list in the "
                "OUTCAR file.",
}


@dataclass
class MockSettings:
    version: str = "6.4.2"
    backend: str = "emt"
    backend_options: dict[str, Any] = field(default_factory=dict)
    block_buffered: bool = False  # emulate the 8 KiB-block file flushing of some 5.4.4 builds
    scf_seconds: float = 0.0  # real work per electronic step and rank, to emulate a costly SCF
    profile: bool = False  # write per-step timings to mock_vasp.profile.jsonl (benchmarks)
    faults: Faults = field(default_factory=Faults)

    @property
    def emulated_version(self) -> EmulatedVersion:
        return EmulatedVersion.parse(self.version)


def _coerce(name: str, value: Any, kind: Any) -> Any:
    text = str(kind)
    try:
        if "bool" in text:
            return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "t")
        if "float" in text:
            return float(value)
        if "int" in text:
            return None if value in (None, "", "none") else int(value)
        if "dict" in text:
            return value if isinstance(value, dict) else json.loads(value)
    except (ValueError, json.JSONDecodeError):
        raise InputError(f"mock-vasp setting {name}: cannot read '{value}' as {text}") from None
    return value


def _apply(target: Any, values: dict[str, Any], origin: str) -> None:
    known = {f.name: f for f in fields(target)}
    for key, value in values.items():
        name = key.lower()
        if name not in known:
            raise InputError(f"mock-vasp: unknown setting '{key}' in {origin}; known: {', '.join(known)}")
        if name == "faults":
            faults = value if isinstance(value, dict) else json.loads(value)
            _apply(target.faults, faults, origin)
        else:
            setattr(target, name, _coerce(name, value, known[name].type))


def load_settings(directory: str | os.PathLike = ".") -> MockSettings:
    settings = MockSettings()
    environment = {
        f.name: os.environ[f"MOCK_VASP_{f.name.upper()}"]
        for f in fields(MockSettings)
        if f"MOCK_VASP_{f.name.upper()}" in os.environ
    }
    _apply(settings, environment, "the environment")
    for path in (os.environ.get("MOCK_VASP_CONFIG"), Path(directory) / CONFIG_FILE):
        if path and Path(path).is_file():
            try:
                values = json.loads(Path(path).read_text())
            except json.JSONDecodeError as error:
                raise InputError(f"mock-vasp: {path} is not valid JSON: {error}") from None
            _apply(settings, values, str(path))
    settings.emulated_version  # validate early  # noqa: B018
    return settings
