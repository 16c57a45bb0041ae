"""Typed errors, and handlers that recognise VASP's failure messages in its output.

As in custodian, detection is separate from the job runner: ``ERROR_HANDLERS`` maps message
patterns to exception types; the session asks ``classify`` when VASP stops unexpectedly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class VaspError(Exception):
    """Base class of everything this package raises about a VASP run."""

    def __init__(self, message: str, *, exit_code: int | None = None, vasp_message: str | None = None,
                 stdout_tail: str = "", stderr_tail: str = "", directory: str | None = None):
        self.summary = message
        self.exit_code = exit_code
        self.vasp_message = vasp_message
        self.stdout_tail = stdout_tail
        self.stderr_tail = stderr_tail
        self.directory = directory
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.summary]
        if self.directory:
            parts.append(f"run directory: {self.directory}")
        if self.exit_code is not None:
            parts.append(f"exit code: {self.exit_code}")
        if self.vasp_message:
            parts.append(f"VASP said: {self.vasp_message.strip()}")
        if self.stdout_tail:
            parts.append("last lines of stdout:\n" + _indent(self.stdout_tail))
        if self.stderr_tail:
            parts.append("last lines of stderr:\n" + _indent(self.stderr_tail))
        return "\n".join(parts)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines())


class VaspSetupError(VaspError, ValueError):
    """Bad input found before VASP was started (command, parameters, atoms)."""


class VaspStartError(VaspError):
    """The VASP command could not be launched."""


class VaspExited(VaspError):
    """VASP ended when a result or a prompt was expected."""


class VaspCrashed(VaspExited):
    """VASP ended with a recognised error message."""


class ZbrentError(VaspCrashed):
    """ZBRENT: fatal error in bracketing (ionic line minimisation)."""


class EigensolverError(VaspCrashed):
    """ZHEGV/ZHEEV failures, non-hermitian subspace matrix (Davidson, RMM-DIIS)."""


class SymmetryError(VaspCrashed):
    """POSMAP, PRICEL, SGRCON and other symmetry failures; ISYM = 0 usually fixes them."""


class MixingError(VaspCrashed):
    """BRMIX: very serious problems (charge-density mixing)."""


class GeometryError(VaspCrashed):
    """Ions too close, degenerate lattice."""


class InputRejected(VaspCrashed):
    """VASP refused its input files (the ERROR box, POTCAR mismatches)."""


class VaspKilled(VaspExited):
    """VASP (or its launcher) was killed by a signal."""


class SlurmError(VaspError):
    """A Slurm command (``squeue``, ``scancel``) failed, or this run's step could not be found."""


class VaspTimeout(VaspError):
    """VASP did not deliver in time; the process was stopped."""


class StartupTimeout(VaspTimeout):
    """No first result within the start-up timeout."""


class StepTimeout(VaspTimeout):
    """An ionic step took longer than the per-step timeout."""


class SilenceTimeout(VaspTimeout):
    """VASP was alive but printed nothing for longer than the silence timeout."""


class VaspProtocolError(VaspError):
    """VASP printed something the interactive protocol does not allow (unknown prompt, garbage)."""


class VaspOutputIncomplete(VaspError):
    """A requested property is not (yet) in VASP's output files."""


class MlStepRefused(VaspError):
    """VASP's force field answered a step without DFT, and the settings ask for DFT labels only."""


class RestartRefused(VaspError):
    """A change needs a VASP restart but the restart policy forbids it."""


@dataclass(frozen=True)
class ErrorHandler:
    name: str
    pattern: re.Pattern
    error: type[VaspCrashed]
    hint: str


def _h(name: str, pattern: str, error: type[VaspCrashed], hint: str) -> ErrorHandler:
    return ErrorHandler(name, re.compile(pattern), error, hint)


ERROR_HANDLERS: tuple[ErrorHandler, ...] = (
    _h("zbrent", r"ZBRENT: fatal (error|internal)", ZbrentError,
       "restart from CONTCAR, lower EDIFF or use another optimizer"),
    _h("edddav", r"Error EDDDAV: Call to ZHEGV failed|EDDDAV:.*ZHEGV", EigensolverError,
       "try ALGO = Normal / All, or a smaller POTIM step in the driver"),
    _h("subspace", r"Sub-Space-Matrix is not hermitian", EigensolverError,
       "try ALGO = Fast or Normal"),
    _h("eddrmm", r"EDDRMM: call to ZHEGV failed", EigensolverError, "switch to ALGO = Normal"),
    _h("zheev", r"ERROR EDDIAG: Call to routine ZHEEV failed|EDDIAG: call to ZHEEV", EigensolverError,
       "switch to ALGO = Normal"),
    _h("posmap", r"POSMAP internal error", SymmetryError, "set ISYM = 0"),
    _h("pricel", r"internal error in subroutine PRICEL", SymmetryError, "set ISYM = 0 or change SYMPREC"),
    _h("sgrcon", r"SGRCON|Found some non-integer element in rotation matrix", SymmetryError, "set ISYM = 0"),
    _h("brmix", r"BRMIX: very serious problems", MixingError, "lower AMIX/BMIX or use IMIX = 1"),
    _h("distance", r"distance between some ions is very small", GeometryError,
       "check the structure sent to VASP: two atoms overlap"),
    _h("triple", r"triple product of the basis vectors", GeometryError, "the cell is degenerate"),
    _h("potcar", r"number of potentials on File POTCAR incompatible", InputRejected,
       "the POTCAR must have one dataset per species, in POSCAR order"),
    _h("error-box", r"I REFUSE TO CONTINUE WITH THIS SICK JOB", InputRejected,
       "read the ERROR box in the stdout tail"),
)


def classify(text: str) -> tuple[type[VaspCrashed], str, str] | None:
    """The error type, the matching VASP message line and a hint, for the first known failure."""
    for line in text.splitlines():
        for handler in ERROR_HANDLERS:
            if handler.pattern.search(line):
                return handler.error, line.strip(), handler.hint
    return None
