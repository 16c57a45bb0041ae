"""Many relaxations as Dask tasks: one structure per task, each in its own directory.

* Each task builds its own parent (``VaspInteractive`` on the fake or a real VASP, or an ASE
  calculator) and, for the learner, its own surrogate and learner in ``<campaign>/<structure>/``.
  Parent points are on disk as they are computed, so an interrupted campaign restarted on the same
  directory skips finished structures and resumes unfinished ones without recomputing a DFT point.
* ``summary.csv`` (one row per structure) is rewritten atomically whenever a task finishes.
* A failing structure (VASP crash, timeout) is recorded with its error and stops nothing else; its
  VASP is stopped by the calculator's context manager before the task returns.
* Default cluster: a ``distributed.LocalCluster`` sized to the machine; any Dask cluster object or
  scheduler address works (see the README for a ``dask-jobqueue`` ``SLURMCluster`` recipe).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

SUMMARY = "summary.csv"
RESULT = "result.json"
COLUMNS = ("structure", "method", "status", "parent_calls", "scf_iterations", "final_energy", "fmax",
           "wall_seconds", "error")


Method = Literal["learner", "bfgs", "gpmin", "fire"]
Query = Literal["default", "start-match", "segments", "relax-only", "k-steps", "uncertainty"]


@dataclass(frozen=True)
class RelaxSettings:
    """What every task of a campaign (or one ``finetuna relax``) does; checked when made."""

    method: Method = "learner"  # the online learner, or the parent alone with an ASE optimizer
    parent: str = "mock"  # mock, vasp, emt, ase:package.module.Class
    model: str = "sevennet"  # sevennet, or fairchem:/path/to/checkpoint.pt
    # default (trust region and guards), segments, or the paper's relax-only, k-steps, uncertainty
    query: Query = "default"
    fmax: float = 0.03
    steps: int = 1000
    max_parent_calls: int | None = None
    vasp_parameters: dict[str, Any] = field(default_factory=dict)
    parent_settings: dict[str, Any] = field(default_factory=dict)  # e.g. {"command": "srun vasp_std"}

    def __post_init__(self) -> None:
        if self.method not in get_args(Method):
            raise ValueError(f"unknown method {self.method!r}: choose one of {', '.join(get_args(Method))}")
        if self.query not in get_args(Query):
            raise ValueError(f"unknown query {self.query!r}: choose one of {', '.join(get_args(Query))}")
        if self.parent not in ("mock", "vasp", "emt") and not self.parent.startswith("ase:"):
            raise ValueError(f"unknown parent {self.parent!r}: use mock, vasp, emt or ase:package.module.Class")
        if self.model != "sevennet" and not self.model.startswith("fairchem:"):
            raise ValueError(f"unknown model {self.model!r}: use sevennet or fairchem:/path/to/checkpoint.pt")
        if not self.fmax > 0 or self.steps < 1 or (self.max_parent_calls is not None and self.max_parent_calls < 1):
            raise ValueError("fmax must be > 0, steps >= 1 and max_parent_calls >= 1 (or None)")


def make_surrogate_from(model: str, ensemble: bool = False):
    from .surrogates import make_surrogate

    if model.startswith("fairchem:"):
        return make_surrogate("fairchem", checkpoint=model.split(":", 1)[1])
    if model != "sevennet":
        raise ValueError(f"unknown model {model!r}: use sevennet or fairchem:/path/to/checkpoint.pt")
    return make_surrogate("sevennet", ensemble_size=5 if ensemble else 1)


def relax_structure(atoms, directory: str | os.PathLike, settings: RelaxSettings,
                    on_step: Callable | None = None, surrogate=None) -> dict[str, Any]:
    """Relax one structure in ``directory`` (resuming what is there); returns the summary row."""
    from ase.io import write

    from .learner import OnlineLearner
    from .parents import close_parent, make_parent
    from .relax import learner_setup, relax, relax_parent_only

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    parent = make_parent(settings.parent, directory / "parent", vasp_parameters=settings.vasp_parameters,
                         **settings.parent_settings)
    try:
        if settings.method == "learner":
            surrogate = surrogate or make_surrogate_from(settings.model, ensemble=settings.query == "uncertainty")
            surrogate.reset()
            setup = learner_setup(settings.query, settings.fmax)
            learner = OnlineLearner(parent, surrogate, setup.policy, directory=str(directory), settings=setup.settings)
            if learner.segment_start is not None:  # resume from the best parent point, not from the start
                atoms = learner.segment_start.atoms.copy()
            result = relax(atoms, learner, fmax=settings.fmax, steps=settings.steps,
                           max_parent_calls=settings.max_parent_calls, guards=setup.guards, driver=setup.driver,
                           trajectory=str(directory / "relax.traj"), on_step=on_step)
        else:
            from .store import RunStore

            result = relax_parent_only(atoms, parent, fmax=settings.fmax, optimizer=settings.method,
                                       steps=settings.steps, store=RunStore(directory))
    finally:
        close_parent(parent)
    if result.atoms is not None:
        write(directory / "final.extxyz", result.atoms)
    row = {"method": settings.method if settings.method != "learner" else f"learner-{settings.query}",
           "status": result.status, "parent_calls": result.parent_calls,
           "scf_iterations": result.scf_iterations, "final_energy": result.energy, "fmax": result.fmax,
           "wall_seconds": time.perf_counter() - started, "error": ""}
    (directory / RESULT).write_text(json.dumps({**row, "details": result.to_dict()}, default=float, indent=1))
    return row


def campaign_task(name: str, path: str, directory: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One Dask task. Never raises: a failure becomes a row with its error."""
    from ase.io import read

    started = time.perf_counter()
    row = {"structure": name}
    try:
        atoms = read(path)
        atoms.pbc = True
        row.update(relax_structure(atoms, directory, RelaxSettings(**settings), surrogate=_worker_surrogate(
            settings)))
    except Exception as error:  # noqa: BLE001 - recorded, the campaign goes on
        row.update({"method": settings.get("method"), "status": "failed", "parent_calls": _stored_points(directory),
                    "scf_iterations": None, "final_energy": None, "fmax": None,
                    "wall_seconds": time.perf_counter() - started,
                    "error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"})
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "error.txt").write_text(traceback.format_exc())
    return row


_SURROGATES: dict[str, Any] = {}


def _worker_surrogate(settings: dict[str, Any]):
    """One surrogate per worker process and model, reset before each task (loading costs seconds)."""
    if settings.get("method", "learner") != "learner":
        return None
    key = f"{settings.get('model', 'sevennet')}|{settings.get('query') == 'uncertainty'}"
    if key not in _SURROGATES:
        _SURROGATES[key] = make_surrogate_from(settings.get("model", "sevennet"),
                                               ensemble=settings.get("query") == "uncertainty")
    return _SURROGATES[key]


def _stored_points(directory: str) -> int:
    path = Path(directory) / "parent.extxyz"
    if not path.is_file():
        return 0
    from .store import RunStore

    return len(RunStore(directory).points)


def write_summary(directory: Path, rows: dict[str, dict[str, Any]]) -> Path:
    """Rewrite ``summary.csv`` at once (write a temporary file, then rename over the old one)."""
    path = directory / SUMMARY
    temporary = path.with_suffix(".csv.tmp")
    with open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for name in sorted(rows):
            writer.writerow({k: rows[name].get(k, "") for k in COLUMNS})
    os.replace(temporary, path)
    return path


def read_summary(directory: Path) -> dict[str, dict[str, Any]]:
    path = Path(directory) / SUMMARY
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {row["structure"]: row for row in csv.DictReader(handle)}


@contextmanager
def local_client(workers: int | None = None) -> Iterator[Any]:
    """A Dask client on a LocalCluster of ``workers`` single-threaded processes (default: one per core).

    Dask's default scratch root (``<tmp>/dask-scratch-space``, made by the scheduler and each worker)
    outlives the cluster; this one has a private root that is removed with it.
    """
    import dask
    from distributed import Client, LocalCluster

    workers = workers or max(1, os.cpu_count() or 1)
    scratch = tempfile.mkdtemp(prefix="finetuna-dask-")
    try:
        with dask.config.set({"temporary-directory": scratch}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                   local_directory=scratch)
        with cluster, Client(cluster) as client:
            yield client
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_campaign(structures: dict[str, str], directory: str | os.PathLike, settings: RelaxSettings,
                 cluster: Any = None, workers: int | None = None,
                 on_result: Callable[[dict[str, Any]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Relax every structure (name -> file) as a Dask task; returns the summary rows by name.

    ``cluster``: None (a LocalCluster with ``workers`` processes), a Dask cluster object, or a
    scheduler address. Finished structures (a ``result.json`` with status converged) are skipped.
    """
    from distributed import Client, as_completed

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = read_summary(directory)
    todo = {}
    for name, path in structures.items():
        result = directory / name / RESULT
        if result.is_file() and json.loads(result.read_text()).get("status") == "converged":
            rows[name] = {"structure": name, **{k: v for k, v in json.loads(result.read_text()).items()
                                                if k in COLUMNS}}
            continue
        todo[name] = path
    write_summary(directory, rows)
    (directory / "campaign.json").write_text(json.dumps(asdict(settings), default=str, indent=1))
    if not todo:
        return rows
    with local_client(workers) if cluster is None else Client(cluster) as client:
        plain = asdict(settings)
        futures = [client.submit(campaign_task, name, str(path), str(directory / name), plain, key=f"relax-{name}",
                                 pure=False) for name, path in todo.items()]
        for future in as_completed(futures):
            row = future.result()
            rows[row["structure"]] = row
            write_summary(directory, rows)
            if on_result is not None:
                on_result(row)
    return rows


def collect_structures(inputs: Iterable[str]) -> dict[str, str]:
    """Structure files from directories, globs and paths; names are file stems (made unique)."""
    import glob

    names: dict[str, str] = {}
    for item in inputs:
        path = Path(item)
        candidates = sorted(path.iterdir()) if path.is_dir() else [Path(p) for p in sorted(glob.glob(item))]
        if not candidates and path.is_file():
            candidates = [path]
        for candidate in candidates:
            if candidate.is_file() and not candidate.name.startswith("."):
                name = candidate.stem
                while name in names:
                    name += "_"
                names[name] = str(candidate.resolve())
    return names
