"""Physics backends by name.

A backend is named by a spec string:

* ``emt`` (default): ASE's EMT (Al Cu Ag Au Ni Pd Pt H C N O);
* ``gpaw``: GPAW, whose SCF iterations are real and replace the model's;
* ``ase:package.module.ClassName``: any importable ASE calculator, built with the options.

Backends with optional dependencies are found by import path only when asked for, so that
``emt`` runs without them installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import BackendError
from .backend import Backend

NATIVE_BACKENDS = {"gpaw": "mock_vasp.physics.gpaw_backend:GpawBackend"}
"""Backends with their own electronic loop: name -> ``module:class`` taking the options dict."""


def _emt() -> Backend:
    from ase.calculators.emt import EMT, parameters

    return Backend("emt", EMT(), set(parameters))


def _native(name: str, options: dict[str, Any]) -> Backend:
    module_name, _, class_name = NATIVE_BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)(options)


def import_by_path(path: str) -> Any:
    """The object named ``package.module.Name`` (or ``package.module:Name``), imported.

    Raises ``ImportError`` naming the path when there is no module part, or the module or the
    name cannot be found. Used for ``ase:package.module.Class`` specs here and by finetuna's parents.
    """
    module_name, _, name = path.replace(":", ".").rpartition(".")
    if not module_name:
        raise ImportError(f"{path!r} has no module part: give package.module.Name")
    try:
        return getattr(importlib.import_module(module_name), name)
    except AttributeError as error:
        raise ImportError(str(error)) from None


def _import_calculator(path: str, options: dict[str, Any]) -> Backend:
    try:
        factory = import_by_path(path)
    except ImportError as error:
        raise BackendError(f"backend 'ase:{path}' cannot be imported ({error}); give the full path, "
                           "e.g. ase:ase.calculators.emt.EMT") from None
    try:
        calculator = factory(**options)
    except Exception as error:
        raise BackendError(f"backend 'ase:{path}' could not be built with {options}: {error}") from None
    return Backend(f"ase:{path}", calculator)


def make_backend(spec: str, options: dict[str, Any] | None = None) -> Backend:
    """Build the backend named by ``spec`` (see module docstring) with keyword ``options``."""
    options = dict(options or {})
    key = spec.strip()
    if key.lower() == "emt":
        return _emt()
    if key.lower() in NATIVE_BACKENDS:
        return _native(key.lower(), options)
    if key.lower().startswith("ase:"):
        return _import_calculator(key[4:], options)
    raise BackendError(f"unknown backend '{spec}': use emt, {', '.join(NATIVE_BACKENDS)} or ase:module.ClassName")
