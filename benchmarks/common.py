"""Shared pieces of the benchmarks: environment, test systems, results files, machine info."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from finetuna_core.environment import apply_defaults

RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent
MOCK_VASP = str(BIN / "mock-vasp")


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def prepare_environment() -> Path:
    """Fake POTCARs for ASE, Open MPI as root, no hub downloads, one BLAS thread.

    SIGTERM becomes ``SystemExit``, so ``kill`` closes the fake VASP and removes temporary run
    directories the way Ctrl-C does (results are saved after every run anyway).
    """
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    from mock_vasp.inputs.potcar import fake_potcar_library

    root = fake_potcar_library(Path(tempfile.gettempdir()) / "vasp-interactive-bench-potcars")
    os.environ["VASP_PP_PATH"] = str(root)
    apply_defaults(mpi_as_root=True, one_thread=True)
    for name in [n for n in os.environ if n.startswith("MOCK_VASP_")]:
        del os.environ[name]
    return root


def mpirun() -> str | None:
    return shutil.which("mpirun", path=str(BIN)) or shutil.which("mpirun")


def copper_slab(natoms: int):
    """A Cu(111) slab with about ``natoms`` atoms, lower half fixed, periodic in all directions."""
    from ase.build import fcc111
    from ase.constraints import FixAtoms

    layers = 4 if natoms >= 40 else 2
    side = max(1, int(round(np.sqrt(natoms / layers))))
    slab = fcc111("Cu", (side, side, layers), vacuum=6.0)
    if len(slab) < natoms:  # top up with a partial layer's worth of adatoms is not needed; report size
        pass
    slab.pbc = True
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag > layers // 2]))
    return slab


def machine() -> dict:
    import psutil

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cores": psutil.cpu_count(logical=True),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), **payload}
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=float))
    temporary.replace(path)
    return path


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain-text table: columns are (key, header)."""
    widths = [max(len(header), *(len(_cell(r.get(k))) for r in rows)) for k, header in columns]
    lines = ["  ".join(h.rjust(w) for (_, h), w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(_cell(row.get(k)).rjust(w) for (k, _), w in zip(columns, widths)))
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else str(value)
