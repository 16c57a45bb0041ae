"""The fault switches of the run settings acted out during a run, and the CPU cost of an SCF step.

Steps count from 1. Rank 0 alone calls ``before_step``, ``during_scf`` and ``forces_block`` (it
alone prints); ``burn_cpu`` and ``scf_params`` run on every rank.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TextIO

import numpy as np

from ..config import ERROR_MESSAGES, Faults
from ..fortran import vector_block, vector_line
from ..mpi import Comm
from ..physics.scf import ScfParams

FLOOD_LINE = "forrtl: warning (402): fort: (1): In call to SUB, an array temporary was created\n"
NOISE_LINE = "\x1b[0m#@!& 0xDEADBEEF ~~~ MPI_ABORT was invoked on rank 3 ~~~"
CHATTER_LINE = " [mock-vasp] chatter: node17 says hello; MPI progress thread alive"


class FaultInjector:
    """Misbehaves the way real runs do, at the steps the ``faults`` switches name."""

    def __init__(self, faults: Faults, scf_seconds: float, comm: Comm, out: TextIO,
                 sync_files: Callable[[], None]):
        self.faults = faults
        self.scf_seconds = scf_seconds
        self.comm = comm
        self.out = out
        self.sync_files = sync_files

    def scf_params(self, step: int, params: ScfParams) -> ScfParams:
        """The SCF parameters of ``step``: density kicks from ``no_convergence_from_step`` on."""
        start = self.faults.no_convergence_from_step
        if start and step >= start:
            return replace(params, noise=0.05)
        return params

    def before_step(self, step: int) -> None:
        """A flood of stderr, or harmless chatter on stdout, before the step's SCF."""
        faults = self.faults
        if faults.stderr_flood_bytes and faults.stderr_flood_at_step == step:
            written = 0
            while written < faults.stderr_flood_bytes:
                sys.stderr.write(FLOOD_LINE)
                written += len(FLOOD_LINE)
            sys.stderr.flush()
        if faults.garbage_at_step == step and faults.garbage == "chatter":
            self.out.write(CHATTER_LINE + "\n")
            self.out.flush()

    def during_scf(self, step: int, index: int) -> None:
        """After electronic step ``index``: slow down, crash with VASP's message, hang, or die of a signal."""
        faults = self.faults
        if faults.slow_step_seconds and index <= 4:
            self.out.flush()
            time.sleep(faults.slow_step_seconds / 4)
        if faults.crash_at_step == step and index == 2:
            self.out.write(ERROR_MESSAGES.get(faults.crash_error, faults.crash_error) + "\n")
            self.out.flush()
            self.sync_files()
            self.comm.abort(1)
        if faults.hang_at_step == step and index == 1:
            self.out.flush()
            while True:  # alive and silent, as a VASP stuck in a collective
                time.sleep(3600)
        if faults.signal_at_step == step and index == 2:
            self.out.flush()
            try:
                import resource

                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            except (ImportError, ValueError, OSError):
                pass
            os.kill(os.getpid(), getattr(signal, faults.signal, signal.SIGSEGV))
            time.sleep(10)

    def forces_block(self, step: int, forces: np.ndarray) -> str:
        """The rows of the FORCES block, garbled (noise line or asterisks) where the step asks for it."""
        faults = self.faults
        if faults.garbage_at_step != step:
            return vector_block(forces)
        lines = []
        for k, force in enumerate(forces):
            if faults.garbage == "noise" and k == len(forces) // 2:
                lines.append(NOISE_LINE)
            if faults.garbage == "overflow" and k == 0:
                lines.append("  ************" + vector_line(force[1:]))
                continue
            lines.append(vector_line(force))
        return "".join(line + "\n" for line in lines)

    def burn_cpu(self) -> None:
        """Real work for ``scf_seconds`` (every rank, every electronic step), so SCF counts cost time."""
        if self.scf_seconds <= 0:
            return
        deadline = time.perf_counter() + self.scf_seconds
        block = np.ones((64, 64))
        while time.perf_counter() < deadline:
            block = np.tanh(block @ block * 1e-3)
