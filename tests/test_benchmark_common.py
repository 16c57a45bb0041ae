"""Benchmark plumbing: a killed benchmark cleans up like an interrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

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
