"""Benchmark plumbing: a killed benchmark cleans up like an interrupted one; which methods run where."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import tempfile, time
from benchmarks.common import prepare_environment
prepare_environment()
with tempfile.TemporaryDirectory() as run_dir:
    print(run_dir, flush=True)
    time.sleep(60)
"""


def test_sigterm_removes_the_run_directory(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    run_dir = Path(proc.stdout.readline().strip())
    assert run_dir.is_dir()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not run_dir.exists()


def test_the_exact_prior_runs_only_where_the_parent_is_a_sevennet_stand_in() -> None:
    from benchmarks.relaxation_methods import EXACT_PRIOR, STAND_IN, applicable, surrogate_for

    emt = {"backend": "emt"}
    assert applicable(EXACT_PRIOR, STAND_IN) and not applicable(EXACT_PRIOR, emt)
    assert applicable("learner-default", emt)
    with pytest.raises(ValueError, match="SevenNet"):
        surrogate_for(EXACT_PRIOR, "default", emt, {})
    surrogates: dict = {}
    exact = surrogate_for(EXACT_PRIOR, "default", STAND_IN, surrogates)
    assert exact.settings.model == STAND_IN["backend_options"]["model"] == "7net-l3i5"
    assert surrogate_for(EXACT_PRIOR, "default", STAND_IN, surrogates) is exact  # built once


def test_default_rows_from_before_the_split_say_their_rejections_are_mixed() -> None:
    from benchmarks.report import _guards

    old = {"extra": {"guards": {"rejected_uphill": 4, "finish_phase": 1}}}
    assert _guards(old) == {"rejected_uphill_or_not_better": 4, "finish_phase": 1}
    new = {"extra": {"guards": {"rejected_uphill": 4, "rejected_not_better": 2, "finish_phase": 1}}}
    assert _guards(new) == new["extra"]["guards"]
