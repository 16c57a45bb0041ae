"""The electronic steps of one ionic step, printed where VASP prints them.

The SCF model (``physics/scf.py``) iterates on every rank; a backend with its own electronic loop
(GPAW) iterates on rank 0 while the others wait. Each electronic step goes to stdout, OSZICAR,
OUTCAR and vasprun.xml, then STOPCAR is checked: ``LABORT`` ends the SCF after that step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..fortran import SCF_HEADER, scf_line
from ..inputs.job import Job
from ..inputs.stopcar import StopRequest, read_stopcar
from ..mpi import Comm
from ..outputs.outcar import OutcarWriter
from ..outputs.outfiles import Oszicar
from ..outputs.vasprun import VasprunWriter
from ..physics.backend import Backend, NativeScfBackend, PhysicsResult, ScfStart
from ..physics.electrons import ElectronicMemory
from ..physics.scf import Geometry, PairCache, ScfLine, ScfOutcome, ScfSolver
from .faults import FaultInjector

NATIVE_WAVECAR = "WAVECAR.gpw"


@dataclass
class ScfResult:
    """What one SCF gave; ``physics`` and ``outcome`` are None on ranks other than 0."""

    physics: PhysicsResult | None
    outcome: ScfOutcome | None
    mean_electronegativity: float  # eV; the Fermi level printed is -2 times it
    timings: dict[str, float] = field(default_factory=dict)


class ElectronicLoop:
    """Runs and prints the SCF of each ionic step. All ranks call ``run``; rank 0 alone prints.

    ``outcar``, ``vasprun`` and ``oszicar`` are rank 0's writers (None elsewhere); ``stop`` is the
    first stop a STOPCAR asked for during the run.
    """

    def __init__(self, comm: Comm, job: Job, backend: Backend | None, memory: ElectronicMemory,
                 faults: FaultInjector, say: Callable[..., None], outcar: OutcarWriter | None,
                 vasprun: VasprunWriter | None, oszicar: Oszicar | None):
        self.comm = comm
        self.job = job
        self.backend = backend
        self.memory = memory
        self.faults = faults
        self.say = say
        self.outcar, self.vasprun, self.oszicar = outcar, vasprun, oszicar
        self.native = bool(comm.bcast(backend.native_scf if comm.is_root else None))
        self.stop: StopRequest | None = None
        self._step = 0
        self._pairs = PairCache()
        self._last_energy: float | None = None
        self._clock = time.perf_counter()

    def run(self, step: int, frac: np.ndarray, lattice: np.ndarray) -> ScfResult:
        """The SCF of ionic step ``step`` at fractional positions ``frac`` in ``lattice``."""
        self._step = step
        if self.native:
            return self._native(frac @ lattice, lattice)
        return self._model(frac, lattice)

    def _begin(self, note: str) -> None:
        if self._step > 1:
            self.say(note)
        self.say(SCF_HEADER)
        self.oszicar.begin_step()
        self.vasprun.begin_step()
        self._clock = time.perf_counter()

    def _emit(self, line: ScfLine) -> bool:
        """Print one electronic step everywhere VASP does; True if STOPCAR asks for a hard stop."""
        now = time.perf_counter()
        shown = line
        if line.index == 1:
            previous = self._last_energy
            if previous is None:
                shown = replace(shown, de=shown.energy, deps=3.0 * shown.energy)
            else:
                shown = replace(shown, de=shown.energy - previous)
        self._last_energy = shown.energy
        self.say(scf_line(shown.algorithm, shown.index, shown.energy, shown.de, shown.deps,
                          shown.ncg, shown.rms, shown.rms_charge), flush=True)
        self.oszicar.scf(shown)
        self.outcar.scf_iteration(self._step, shown, now - self._clock)
        self.vasprun.scf(shown, now - self._clock)
        self._clock = now
        self.faults.during_scf(self._step, line.index)
        # With the machine-learned force field on, real VASP does not honour STOPCAR reliably: the
        # fake ignores it altogether, so drivers must stop it with SIGINT.
        found = None if self.job.incar.get_bool("ML_LMLFF") else read_stopcar(self.job.directory)
        if found and self.stop is None:
            self.stop = found
        return self.stop == "LABORT"

    def _model(self, frac: np.ndarray, lattice: np.ndarray) -> ScfResult:
        """The SCF model: every rank iterates; rank 0 computes the physics and prints."""
        job = self.job
        symbols = job.structure.symbols
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        geometry = Geometry(symbols, frac @ lattice, lattice, cache=self._pairs)
        params = self.faults.scf_params(self._step, job.scf)
        if self._step > 1 and job.scf.nelmdl < 0:
            params = replace(params, nelmdl=0)  # negative NELMDL: only at the first ionic step
        solver = ScfSolver(geometry, params, self.comm, charge=job.zval_total - job.nelect)
        guess, note = self.memory.start(frac, lattice)
        setup = time.perf_counter() - clock
        physics: PhysicsResult | None = None
        if self.comm.is_root:
            clock = time.perf_counter()
            physics = self.backend.compute(symbols, frac @ lattice, lattice, job.stress_requested)
            timings["physics"] = time.perf_counter() - clock
            self._begin(note)
        base = physics.energy if physics is not None else 0.0
        lines: list[ScfLine] = []

        def after_line(line: ScfLine) -> bool:
            abort = None
            if self.comm.is_root:
                shown = replace(line, energy=base + line.energy)
                lines.append(shown)
                abort = self._emit(shown)
            return bool(self.comm.bcast(abort))

        clock = time.perf_counter()
        outcome = solver.run(guess, after_line, self.faults.burn_cpu)
        timings["scf_model"] = setup + time.perf_counter() - clock
        outcome.lines = lines
        self.memory.remember(frac, lattice, solver.q_star)
        return ScfResult(physics, outcome, float(np.mean(geometry.chi)), timings)

    def _native(self, cartesian: np.ndarray, lattice: np.ndarray) -> ScfResult:
        """A backend with its own electronic loop (GPAW) runs on rank 0; the others wait."""
        job = self.job
        physics = outcome = None
        if self.comm.is_root:
            assert isinstance(self.backend, NativeScfBackend)
            restart = job.directory / NATIVE_WAVECAR
            start: ScfStart
            if self._step > 1:
                start, note = "memory", " bond charge predicted"
            elif job.istart > 0 and restart.is_file():
                start, note = "wavecar", ""
            else:
                start, note = "cold", ""
            self._begin(note)
            kpts = job.kpoints.divisions or (1, 1, 1)
            physics, outcome = self.backend.run_scf(
                job.structure.symbols, cartesian, lattice, start, restart, kpts, job.scf.ediff, job.scf.nelm,
                job.stress_requested, self._emit)
        self.comm.barrier()
        return ScfResult(physics, outcome, 0.0)
