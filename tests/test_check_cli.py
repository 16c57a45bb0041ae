"""``vasp-interactive check`` on the fake VASP: variants, buffering, MPI, broken commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import MOCK_VASP, run_quiet

CHECK = str(Path(sys.executable).parent / "vasp-interactive")


@pytest.mark.parametrize("version, variant, lattice", [
    ("5.4.4", "classic", "not streamable"),
    ("6.3.2+lattice", "lattice-patch", "streamed"),
    ("6.4.2", "poscar-record", "streamed"),
])
@pytest.mark.slow
def test_check_reports_variant(version, variant, lattice):
    env = dict(os.environ, MOCK_VASP_VERSION=version)
    done = run_quiet([CHECK, "check", "--command", MOCK_VASP, "--timeout", "60"], env=env, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    report = dict(line.split(":", 1) for line in done.stdout.splitlines() if ":" in line)
    assert report["VASP version"].strip().startswith(version.split("+")[0])
    assert report["protocol variant"].strip() == variant
    assert report["lattice streaming"].strip().startswith(lattice)
    assert report["pausing"].strip().startswith("psutil: ranks stopped")
    assert report["OUTCAR complete"].strip() == "yes"


@pytest.mark.slow
def test_check_sees_block_buffering_and_mpi(mpirun):
    env = dict(os.environ, MOCK_VASP_BLOCK_BUFFERED="1")
    done = run_quiet([CHECK, "check", "--command", f"{mpirun} -np 2 {MOCK_VASP}"], env=env, timeout=180)
    assert done.returncode == 0, done.stdout
    assert "OUTCAR complete:      NO" in done.stdout
    assert "openmpi: ranks stopped (2/2" in done.stdout


@pytest.mark.slow
def test_check_fails_on_a_broken_command(tmp_path):
    done = run_quiet([CHECK, "check", "--command", "no-such-vasp"], timeout=60)
    assert done.returncode == 1 and "not found" in done.stdout and "NOT compatible" in done.stdout
    crash = tmp_path / "crash.sh"
    crash.write_text("#!/bin/sh\necho ' vasp.6.4.2 20Jul23'\necho ' ZBRENT: fatal error in bracketing'\nexit 3\n")
    crash.chmod(0o755)
    done = run_quiet([CHECK, "check", "--command", str(crash)], timeout=60)
    assert done.returncode == 1 and "ZBRENT" in done.stdout
