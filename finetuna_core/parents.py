"""Parent (DFT) calculators by name: the fake VASP, a real VASP, EMT, or any ASE calculator."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ase.calculators.calculator import Calculator

DEFAULT_VASP_PARAMETERS: dict[str, Any] = {
    "xc": "PBE", "encut": 350, "kpts": (2, 2, 1), "ismear": 1, "sigma": 0.2, "ediff": 1e-5, "lreal": "Auto",
}
PARENTS = ("mock", "vasp", "emt", "ase:module.Class")


def fake_potcar_path() -> Path:
    """A fake POTCAR library for the fake VASP (created once, reused)."""
    from mock_vasp.potcar import write_potcar_library

    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vasp-interactive" / "potcars"
    if not (root / "potpaw_PBE" / "Rb_pv" / "POTCAR").is_file():
        write_potcar_library(root, "PBE")
    return root


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

        if key == "mock":
            os.environ.setdefault("VASP_PP_PATH", str(fake_potcar_path()))
            command = settings.pop("command", None) or mock_vasp_command()
        else:
            command = settings.pop("command", None)
        return VaspInteractive(command=command, directory=directory, **settings, **parameters)
    if key.startswith("ase:"):
        module_name, _, class_name = key[4:].rpartition(".")
        try:
            factory = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError) as error:
            raise ValueError(f"parent {spec!r} cannot be imported ({error}); give ase:package.module.Class") from None
        return factory(**settings)
    raise ValueError(f"unknown parent {spec!r}: choose mock, vasp, emt or ase:package.module.Class")
