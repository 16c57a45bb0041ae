"""Decoding VASP's interactive stdout: a pure state machine over lines, no I/O, no clocks.

``StreamParser.feed(line)`` returns the events the line completes. It tells the protocol variants
apart by the prompt text and never counts the lines VASP echoes after the client's input: it
waits for the matching ``read from stdin`` marker. VASP <= 6.3 echoes the new and an "old" block
of positions; on real VASP the old block is the run's first structure, not the previous one, so
nothing here reads it. The lattice patch's echo has one exact layout (below): it is parsed, and
anything else between the lattice and its marker is a protocol error.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from ..errors import VaspProtocolError, classify
from .events import (
    ACCEPTED,
    ErrorMessage,
    Event,
    HardStop,
    InputAccepted,
    LatticeEcho,
    Prompt,
    PromptKind,
    ProtocolVariant,
    StepResult,
    StepStarted,
)


class Phase(str, Enum):
    STARTUP = "startup"
    RUNNING = "running"  # electronic steps of an ionic step
    FORCES = "forces"  # inside the FORCES: block
    AWAITING_ENERGY = "awaiting-energy"  # forces read, F= line expected
    PROMPTED = "prompted"  # VASP waits for the client
    ACKNOWLEDGING = "acknowledging"  # input sent, waiting for "read from stdin"
    ACCEPTED = "accepted"  # VASP confirmed the input; a LATTICE prompt or the next step follows
    ENDING = "ending"  # after the last result, VASP writes files and exits


_VERSION = re.compile(r"\bvasp\.(\S+)")
_SCF = re.compile(r"^\s*(DAV|RMM|CG|EDIAG|DIA|SDA|DMP|CGA|ALG):\s*(\d+)\s+(\S+)")
_ENERGY = re.compile(
    r"^\s*(\d+)\s+F=\s*(\S+)\s+E0=\s*(\S+)\s+d\s*E\s*=\s*(\S+)(?:\s+mag=\s*(\S+))?\s*$"
)
# The lattice patch's echo: per lattice (New, then Old) a header, three rows of 3X,3F13.7,3X,3F13.7
# (direct vector, reciprocal vector without the 2 pi) and an empty line.
_LATTICE_HEADER = re.compile(r"^(New|Old)\s+direct lattice vectors\s+reciprocal lattice vectors$")
_LATTICE_ROW_WIDTH = 3 + 3 * 13 + 3 + 3 * 13


def fortran_float(text: str) -> float:
    """A Fortran real (``-.62323928E+01``, ``1.0D-03``, ``0.5+100``); raises ValueError."""
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if value - value == 0.0:  # finite
            return value
        raise ValueError(text)
    cleaned = text.strip().replace("D", "E").replace("d", "e")
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[-+]\d{3}", cleaned):  # exponent without 'E'
        cleaned = re.sub(r"([-+]\d{3})$", r"E\1", cleaned)
    value = float(cleaned)
    if not np.isfinite(value):
        raise ValueError(text)
    return value


def is_scf_line(line: str) -> bool:
    """One electronic (SCF) step as VASP prints it on stdout and in OSZICAR, for any algorithm
    (``DAV:``, ``RMM:``, ``CG:``, ...)."""
    return _SCF.match(line) is not None


@functools.cache
def _touching_fields(decimals: tuple[int, ...], overflow: bool) -> re.Pattern:
    unprintable = r"|\*+|NaN|[-+]?Inf(?:inity)?" if overflow else ""
    return re.compile(r"\s*".join(rf"([-+]?\d*\.\d{{{d}}}{unprintable})" for d in decimals))


def fixed_point_row(text: str, decimals: tuple[int, ...], *, unprintable_as_nan: bool = False) -> list[float]:
    """The numbers of one row VASP printed with Fortran ``F`` formats, one per entry of ``decimals``.

    A value that fills its whole field leaves no blank before it: at forces of 10^6 eV/A, OUTCAR's
    ``3F14.6`` prints ``762318.6875001204096.875000``. Such a row is split by each field's count of
    decimals, which is unambiguous. A value VASP could not print (asterisks where it overflowed its
    field; ``NaN``, ``Infinity`` as Fortran prints them) raises ValueError, or reads as NaN with
    ``unprintable_as_nan``. Anything else that is not such a row raises ValueError.
    """
    def value(field: str) -> float:
        if not unprintable_as_nan:
            return fortran_float(field)
        if not field.strip("*"):
            return math.nan
        number = float(field)
        return number if math.isfinite(number) else math.nan

    words = text.split()
    if len(words) == len(decimals):
        return [value(word) for word in words]
    match = _touching_fields(decimals, unprintable_as_nan).fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a row of {len(decimals)} fixed-point numbers: {text!r}")
    return [value(group) for group in match.groups()]


@dataclass
class StreamParser:
    """Turns VASP's stdout lines into protocol events.

    ``prompt``: the prompt VASP printed last; ``variant``: the dialect learnt from the prompts;
    ``version``: from VASP's header line.
    """

    natoms: int
    phase: Phase = Phase.STARTUP
    variant: ProtocolVariant = ProtocolVariant.UNKNOWN
    version: str | None = None
    prompt: PromptKind | None = None
    _forces: list[list[float]] = field(default_factory=list)
    _scf_energies: list[float] = field(default_factory=list)
    _pending_forces: np.ndarray | None = None
    _lattice_echo: list[str] = field(default_factory=list)

    def expect_input_sent(self) -> None:
        """The client has answered the prompt; the next marker must acknowledge it."""
        if self.phase is not Phase.PROMPTED:
            raise VaspProtocolError(f"input sent while VASP is not waiting for it (phase {self.phase.value})")
        self.phase = Phase.ACKNOWLEDGING

    def feed(self, line: str) -> list[Event]:
        text = line.rstrip("\r\n")
        stripped = text.strip()
        if self.phase is Phase.FORCES:
            return self._force_line(stripped)

        if self.version is None and (match := _VERSION.search(text)):
            self.version = match.group(1)
            return []

        known = classify(text)
        if known is not None:
            return [ErrorMessage(*known)]

        if self.phase is Phase.ACKNOWLEDGING and self.prompt is PromptKind.LATTICE:
            if stripped != "LATTICE: read from stdin":
                self._lattice_echo.append(text.rstrip())
                return []
            echo = _parse_lattice_echo(self._lattice_echo)
            self._lattice_echo = []
            return [echo, *self._accepted(PromptKind.LATTICE)]
        if stripped in ACCEPTED:
            return self._accepted(ACCEPTED[stripped])
        if stripped.endswith("reading from stdin"):
            return self._prompt(stripped)

        if match := _SCF.match(text):
            events: list[Event] = self._step_started() if self.phase in (Phase.STARTUP, Phase.ACCEPTED) else []
            if self.phase is Phase.RUNNING:
                try:
                    self._scf_energies.append(fortran_float(match.group(3)))
                except ValueError:
                    raise VaspProtocolError(f"unreadable electronic-step line: {text!r}") from None
            return events
        if stripped == "FORCES:":
            # STARTUP or ACCEPTED: a step VASP's machine-learned force field answered, without an SCF loop
            if self.phase not in (Phase.RUNNING, Phase.STARTUP, Phase.ACCEPTED):
                raise VaspProtocolError(f"FORCES block in an unexpected place (phase {self.phase.value})")
            events = [] if self.phase is Phase.RUNNING else self._step_started()
            self.phase = Phase.FORCES
            self._forces = []
            return events
        if " F=" in text and "E0=" in text:
            return self._energy_line(text)
        if "hard stop encountered" in stripped:
            return [HardStop()]
        return []

    # -- pieces --------------------------------------------------------------------------
    def _step_started(self) -> list[Event]:
        after = self.prompt if self.phase is Phase.ACCEPTED else None
        self.phase = Phase.RUNNING
        return [StepStarted(after)]

    def _force_line(self, stripped: str) -> list[Event]:
        try:
            self._forces.append(fixed_point_row(stripped, (7, 7, 7)))  # 3F14.7
        except ValueError:
            raise VaspProtocolError(
                f"malformed line {len(self._forces) + 1} of {self.natoms} in the FORCES block: {stripped!r} "
                "(garbage on stdout, or a force too large for VASP's format)"
            ) from None
        if len(self._forces) == self.natoms:
            self._pending_forces = np.array(self._forces)
            self.phase = Phase.AWAITING_ENERGY
        return []

    def _energy_line(self, text: str) -> list[Event]:
        match = _ENERGY.match(text)
        if match is None:
            raise VaspProtocolError(f"unreadable energy line: {text!r}")
        if self.phase is not Phase.AWAITING_ENERGY or self._pending_forces is None:
            raise VaspProtocolError(f"energy line without a FORCES block before it: {text!r}")
        try:
            free, sigma0 = fortran_float(match.group(2)), fortran_float(match.group(3))
            magnetization = fortran_float(match.group(5)) if match.group(5) else None
        except ValueError:
            raise VaspProtocolError(f"unreadable number in the energy line: {text!r}") from None
        result = StepResult(
            step=int(match.group(1)),
            free_energy=free,
            energy_sigma0=sigma0,
            forces=self._pending_forces,
            scf_iterations=len(self._scf_energies),
            magnetization=magnetization,
            scf_energies=tuple(self._scf_energies),
        )
        self._pending_forces = None
        self._scf_energies = []
        self.phase = Phase.ENDING
        return [result]

    def _prompt(self, stripped: str) -> list[Event]:
        try:
            kind = PromptKind(stripped)
        except ValueError:
            raise VaspProtocolError(
                f"unknown prompt {stripped!r}: this VASP speaks a protocol variant this driver does not know"
            ) from None
        if kind is PromptKind.LATTICE:
            if self.phase is not Phase.ACCEPTED or self.prompt is not PromptKind.POSITIONS:
                raise VaspProtocolError("LATTICE prompt without a POSITIONS exchange just before it")
            self.variant = ProtocolVariant.LATTICE_PATCH
        elif self.phase is not Phase.ENDING:
            raise VaspProtocolError(f"prompt {stripped!r} before VASP delivered forces and energy")
        elif kind is PromptKind.POSITIONS_AND_LATTICE:
            self.variant = ProtocolVariant.POSCAR_RECORD
        elif self.variant is ProtocolVariant.UNKNOWN:
            self.variant = ProtocolVariant.CLASSIC  # may still turn out to be the lattice patch
        self.prompt = kind
        self.phase = Phase.PROMPTED
        return [Prompt(kind)]

    def _accepted(self, kind: PromptKind) -> list[Event]:
        if self.phase is not Phase.ACKNOWLEDGING or kind is not self.prompt:
            raise VaspProtocolError(f"{kind.value.replace('reading', 'read')!r} without matching input")
        self.phase = Phase.ACCEPTED
        return [InputAccepted(kind)]


def _parse_lattice_echo(lines: list[str]) -> LatticeEcho:
    """The 10 lines between the lattice input and its marker (layout: see ``_LATTICE_HEADER``)."""
    def fail(why: str) -> VaspProtocolError:
        shown = " | ".join(lines[:12])
        return VaspProtocolError(f"the lattice echo is not the lattice patch's layout ({why}): {shown!r}")

    if len(lines) != 10:
        raise fail(f"{len(lines)} lines, expected 2 x (header, 3 rows, empty line)")
    blocks = {}
    for offset, label in ((0, "New"), (5, "Old")):
        header = _LATTICE_HEADER.match(lines[offset].strip())
        if header is None or header.group(1) != label:
            raise fail(f"line {offset + 1} is not the {label!r} header")
        if lines[offset + 4].strip():
            raise fail(f"line {offset + 5} should be empty")
        rows = []
        for row in lines[offset + 1: offset + 4]:
            if len(row) != _LATTICE_ROW_WIDTH or row[:3].strip() or row[42:45].strip():
                raise fail(f"row {row!r} is not 3X,3F13.7,3X,3F13.7")
            fields = [row[3 + 13 * k: 16 + 13 * k] for k in range(3)] + [row[45 + 13 * k: 58 + 13 * k]
                                                                           for k in range(3)]
            try:
                rows.append([fortran_float(f) for f in fields])
            except ValueError:
                raise fail(f"unreadable number in {row!r}") from None
        blocks[label] = np.array(rows)
    return LatticeEcho(new=blocks["New"][:, :3], old=blocks["Old"][:, :3], new_reciprocal=blocks["New"][:, 3:])


def lattice_echo_mismatch(echo: LatticeEcho, sent: np.ndarray) -> str | None:
    """Why the echoed lattice is not the one sent, or None when it is (F13.7 rounds to 5e-8)."""
    if np.abs(echo.new - sent).max() <= 1e-6 * max(1.0, float(np.abs(sent).max())):
        return None
    return (f"VASP echoed a lattice other than the one sent: {echo.new.tolist()} "
            f"instead of {np.round(sent, 7).tolist()}")
