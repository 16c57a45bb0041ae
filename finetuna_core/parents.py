"""Parent (DFT) calculators: by name (the fake VASP, a real VASP, EMT, or any ASE calculator), and
the optional abilities the learner uses where a parent has them (pause/resume, close, its SCF
energy tolerance).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

DEFAULT_VASP_PARAMETERS: dict[str, Any] = {
    "xc": "PBE", "encut": 350, "kpts": (2, 2, 1), "ismear": 1, "sigma": 0.2, "ediff": 1e-5, "lreal": "Auto",
}
PARENTS = ("mock", "vasp", "emt", "ase:module.Class")


@runtime_checkable
class PausableParent(Protocol):
    """A parent whose processes can be stopped while Python works (``VaspInteractive``)."""

    def pause(self) -> Any: ...

    def resume(self) -> Any: ...


@runtime_checkable
class ClosableParent(Protocol):
    """A parent that holds a process or files until closed."""

    def close(self) -> None: ...


@runtime_checkable
class ReportsScfTolerance(Protocol):
    """A parent that says how precise its energies are (``VaspInteractive``: its EDIFF)."""

    def scf_energy_tolerance(self, n_atoms: int) -> float: ...


def compute(parent: Calculator, atoms: Atoms) -> tuple[float, np.ndarray]:
    """Energy and unconstrained forces of ``atoms`` from ``parent``, on a copy (``atoms`` keeps its calculator)."""
    work = atoms.copy()
    work.calc = parent
    return float(work.get_potential_energy()), np.array(work.get_forces(apply_constraint=False))


def close_parent(parent: object) -> None:
    """Close ``parent`` if it is closable (a VASP process, a socket); others need nothing."""
    if isinstance(parent, ClosableParent):
        parent.close()


def fake_potcar_path() -> Path:
    """A fake POTCAR library for the fake VASP (created once, reused)."""
    from mock_vasp.inputs.potcar import fake_potcar_library

    return fake_potcar_library(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                               / "vasp-interactive" / "potcars")


def mock_vasp_command() -> list[str]:
    local = Path(sys.executable).parent / "mock-vasp"
    if local.exists():
        return [str(local)]
    found = shutil.which("mock-vasp")
    if found:
        return [found]
    return [sys.executable, "-m", "mock_vasp"]


def make_parent(spec: str, directory: str | os.PathLike, vasp_parameters: dict[str, Any] | None = None,
                **settings: Any) -> Calculator:
    """``mock``: VaspInteractive on the fake VASP; ``vasp``: on ASE_VASP_COMMAND; ``emt``; ``ase:pkg.mod.Class``."""
    key = spec.strip()
    parameters = {**DEFAULT_VASP_PARAMETERS, **(vasp_parameters or {})}
    if key == "emt":
        from ase.calculators.emt import EMT

        return EMT()
    if key in ("mock", "vasp"):
        from vasp_interactive import VaspInteractive

        if key == "mock":  # the fake's own POTCARs, unless the caller names a library (the environment is left alone)
            settings.setdefault("pp_path", fake_potcar_path())
            command = settings.pop("command", None) or mock_vasp_command()
        else:
            command = settings.pop("command", None)
        return VaspInteractive(command=command, directory=directory, **settings, **parameters)
    if key.startswith("ase:"):
        from mock_vasp.physics.registry import import_by_path

        try:
            factory = import_by_path(key[4:])
        except ImportError as error:
            raise ValueError(f"parent {spec!r} cannot be imported ({error}); give ase:package.module.Class") from None
        return factory(**settings)
    raise ValueError(f"unknown parent {spec!r}: choose mock, vasp, emt or ase:package.module.Class")
