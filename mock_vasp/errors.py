"""Errors of the fake VASP. Each carries the text VASP itself would print."""

from __future__ import annotations


class MockVaspError(Exception):
    """Base class: the run stops, the message goes to stdout, the exit code is non-zero."""

    exit_code = 1


class InputError(MockVaspError):
    """Missing or invalid input file (INCAR, POSCAR, KPOINTS, POTCAR)."""


class BackendError(MockVaspError):
    """The physics backend cannot treat this system (unknown element, bad settings)."""


class ProtocolInputError(MockVaspError):
    """The client sent something on stdin that VASP cannot read."""
