"""The run loop of the fake VASP: ionic steps in static, relaxation and interactive modes."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TextIO

import numpy as np

from .backend import Backend, PhysicsResult
from .config import ERROR_MESSAGES, MockSettings
from .electrons import ElectronicMemory, SavedWavefunction, read_wavecar, write_wavecar
from .errors import MockVaspError
from .fortran import SCF_HEADER, energy_line, scf_line, vector_block, vector_line
from .incar import Incar
from .interactive import StdinReader, read_client_input
from .job import Job
from .mlff import ForceField
from .mpi import Comm
from .outcar import OutcarWriter
from .outfiles import IonicResult, Oszicar, atomic_write
from .poscar import format_poscar
from .relax import make_optimizer
from .scf import Geometry, PairCache, ScfLine, ScfSolver
from .vasprun import VasprunWriter

KBAR_PER_EV_A3 = 1602.1766208
HARD_STOP = " hard stop encountered!  aborting job ..."
SOFT_STOP = " soft stop encountered!  aborting job ..."

NELM_WARNING = """ -----------------------------------------------------------------------------
|                                                                             |
|           W    W    AA    RRRRR   N    N  II  N    N   GGGG   !!!           |
|           W    W   A  A   R    R  NN   N  II  NN   N  G    G  !!!           |
|           W    W  A    A  R    R  N N  N  II  N N  N  G       !!!           |
|           W WW W  AAAAAA  RRRRR   N  N N  II  N  N N  G  GGG   !            |
|           WW  WW  A    A  R   R   N   NN  II  N   NN  G    G                |
|           W    W  A    A  R    R  N    N  II  N    N   GGGG   !!!           |
|                                                                             |
|     The electronic self-consistency was not achieved in the given           |
|     number of steps (NELM). The forces and other quantities evaluated       |
|     might not be reliable so examine the results carefully.                 |
|                                                                             |
 -----------------------------------------------------------------------------"""


def read_stopcar(directory: Path) -> str | None:
    """'LABORT', 'LSTOP' or None. A STOPCAR without a valid tag is ignored, as VASP does."""
    path = directory / "STOPCAR"
    if not path.exists():
        return None
    try:
        stopcar = Incar.from_text(path.read_text())
        if stopcar.get_bool("LABORT"):
            return "LABORT"
        if stopcar.get_bool("LSTOP"):
            return "LSTOP"
    except (OSError, MockVaspError):
        return None
    return None


class Run:
    """One VASP run. All ranks call every method; rank 0 alone reads stdin and writes files."""

    def __init__(self, comm: Comm, settings: MockSettings, job: Job, backend: Backend | None,
                 out: TextIO = sys.stdout, stdin: TextIO | None = None):
        self.comm = comm
        self.settings = settings
        self.faults = settings.faults
        self.job = job
        self.backend = backend
        self.out = out
        self.reader = StdinReader(stdin)
        self.variant = settings.emulated_version.variant(job.isif)
        self.directory = job.directory
        self.lattice = job.structure.lattice.copy()
        self.frac = job.structure.frac.copy()
        self.step = 0
        self.force_field = ForceField(job.mlff) if job.mlff.enabled else None  # only rank 0's predicts and learns
        self.stop: str | None = None
        self.last: IonicResult | None = None
        self._last_scf_energy: float | None = None
        self._profile = None
        self._pairs = PairCache()
        self._timings: dict[str, float] = {}
        if comm.is_root and settings.profile:
            self._profile = open(job.directory / "mock_vasp.profile.jsonl", "w")
        self.started = time.perf_counter()
        restart = None
        if job.istart > 0:
            restart = read_wavecar(self.directory / "WAVECAR")
            if restart is not None and (restart.species != job.structure.species
                                        or restart.counts != job.structure.counts):
                restart = None
        self.memory = ElectronicMemory(job.iwavpr, restart=restart)
        self.outcar = self.vasprun = self.oszicar = None
        self.native = bool(comm.bcast(backend.native_scf if comm.is_root else None))
        self._clock = time.perf_counter()
        if comm.is_root:
            blocks = settings.block_buffered
            version = settings.emulated_version
            self.outcar = OutcarWriter(self.directory, job, version, comm.size, blocks)
            self.vasprun = VasprunWriter(self.directory, job, version, blocks)
            self.oszicar = Oszicar(self.directory, blocks)

    # ---------------------------------------------------------------- output helpers
    def say(self, text: str, flush: bool = False) -> None:
        if self.comm.is_root:
            self.out.write(text + "\n")
            if flush:
                self.out.flush()

    def sync_files(self) -> None:
        if self.comm.is_root:
            for writer in (self.outcar, self.vasprun, self.oszicar):
                writer.file.sync()
            self.out.flush()

    # ---------------------------------------------------------------- modes
    def execute(self) -> int:
        job = self.job
        self.say(" POSCAR found type information on POSCAR " + " ".join(job.structure.species) + " ")
        self.say(f" POSCAR found : {len(job.structure.species):2d} types and {job.natoms:7d} ions")
        self.say(" scaLAPACK will be used")
        self.say(" LDA part: xc-table for Pade appr. of Perdew")
        self.say(" POSCAR, INCAR and KPOINTS ok, starting setup")
        self.say(" FFT: planning ...")
        self.say(" WAVECAR read" if self.memory.restart is not None else " WAVECAR not read")
        self.say(" entering main loop", flush=True)
        mode = job.ionic_mode
        if mode == "interactive":
            self._interactive()
        elif mode == "relax":
            self._relax()
        else:
            self._static()
        self._finish()
        return 0

    def _static(self) -> None:
        steps = max(1, self.job.nsw if self.job.ibrion == -1 else 1)
        previous = 0.0
        for _ in range(steps):
            result = self.ionic_step(self.frac, self.lattice)
            if self.comm.is_root:
                self._print_energy(result, result.free_energy - previous)
                previous = result.free_energy
            if self.comm.bcast(self.stop is not None):
                break

    def _relax(self) -> None:
        job = self.job
        mask = job.structure.free_mask()
        optimizer = make_optimizer(job.ibrion, job.potim, mask) if self.comm.is_root else None
        previous = None
        while True:
            result = self.ionic_step(self.frac, self.lattice)
            decision = None
            if self.comm.is_root:
                de = result.free_energy - (previous if previous is not None else 0.0)
                self._print_energy(result, de)
                converged = self._relaxation_converged(result, previous, mask)
                previous = result.free_energy
                if converged:
                    self.say(" reached required accuracy - stopping structural energy minimisation")
                    self.outcar.message("reached required accuracy - stopping structural energy minimisation")
                elif self.step < job.nsw and self.stop is None:
                    cartesian = optimizer.step(result.cartesian, result.free_energy, result.forces)
                    decision = np.linalg.solve(self.lattice.T, cartesian.T).T
                    self.say(" " + optimizer.message)
            decision = self.comm.bcast(decision)
            if decision is None:
                return
            self.frac = decision

    def _relaxation_converged(self, result: IonicResult, previous: float | None, mask) -> bool:
        ediffg = self.job.ediffg
        if ediffg < 0:
            free_forces = result.forces * mask
            return bool(np.linalg.norm(free_forces, axis=1).max(initial=0.0) < abs(ediffg))
        if previous is None or ediffg == 0:
            return False
        return abs(result.free_energy - previous) < ediffg

    def _interactive(self) -> None:
        job = self.job
        while True:
            result = self.ionic_step(self.frac, self.lattice)
            if self.comm.is_root:
                self._print_forces(result)
                self._print_energy(result, result.free_energy)
            if self.step >= job.nsw:
                return  # the NSW budget is spent: VASP ends without asking for more
            received = None
            if self.comm.is_root:
                self.sync_files()
                self._write_profile()
                received = read_client_input(self.variant, self.reader, self.out, self.frac, self.lattice,
                                             job.structure.species, job.structure.counts,
                                             initial_frac=job.structure.frac)
            self.frac, self.lattice = self.comm.bcast(received)
            self._timings = {"input_read": time.perf_counter()}
            if self.comm.bcast(self.stop is not None):
                return

    # ---------------------------------------------------------------- one ionic step
    def ionic_step(self, frac: np.ndarray, lattice: np.ndarray) -> IonicResult:
        self.step += 1
        started = time.perf_counter()
        job = self.job
        symbols = job.structure.symbols
        cartesian = frac @ lattice
        if self.comm.is_root:
            self._step_faults_before()
        if self.force_field is not None and self._force_field_step(frac, lattice, started):
            return self.last  # type: ignore[return-value]
        if self.native:
            physics, outcome, chi_mean = self._native_step(symbols, cartesian, lattice)
        else:
            physics, outcome, chi_mean = self._model_step(symbols, frac, lattice)
        if not self.comm.is_root:
            return None  # type: ignore[return-value]
        if not outcome.converged and self.stop != "LABORT":
            self.say(NELM_WARNING)
        if self.stop == "LABORT":
            self.say(HARD_STOP)
        free = physics.energy + (0.0 if outcome.converged or self.native else outcome.excess_energy)
        entropy = job.smearing_entropy
        stress_kb = None
        if physics.stress is not None:
            xx, yy, zz, yz, xz, xy = physics.stress
            stress_kb = -np.array([xx, yy, zz, xy, yz, xz]) * KBAR_PER_EV_A3
        result = IonicResult(
            step=self.step,
            lattice=lattice.copy(),
            frac=frac.copy(),
            free_energy=free,
            energy_without_entropy=free + entropy,
            energy_sigma0=free + 0.5 * entropy,
            forces=physics.forces,
            stress_kb=stress_kb,
            converged=outcome.converged,
            efermi=-2.0 * chi_mean,
            de=0.0,
            magnetization=self._magnetization(),
            scf_lines=outcome.lines,
            seconds=time.perf_counter() - started,
        )
        aborted = HARD_STOP.strip() if self.stop == "LABORT" else None
        if self.force_field is not None:
            self.force_field.learn(result.cartesian, result.free_energy, result.forces, result.stress_kb)
        self.outcar.ionic_step(result, aborted)
        self.vasprun.ionic_step(result)
        if self.stop == "LSTOP":
            self.say(SOFT_STOP)
            self.outcar.message(SOFT_STOP.strip())
        structure = job.structure if np.allclose(lattice, job.structure.lattice) else replace(job.structure,
                                                                                               lattice=lattice)
        atomic_write(self.directory / "CONTCAR", format_poscar(structure, frac=frac))
        self.last = result
        return result

    def _force_field_step(self, frac: np.ndarray, lattice: np.ndarray, started: float) -> bool:
        """Predict with the force field (an ML block in OUTCAR); True if that is the step's result.

        Every rank takes the same branch; on the others ``self.last`` is not used.
        """
        ml_only = None
        if self.comm.is_root:
            clock = time.perf_counter()
            cartesian = frac @ lattice
            prediction = self.force_field.predict(cartesian, self.job.natoms)
            if self.step == 1:  # VASP prints the first header before the first ML block, later ones after
                self.outcar.ionic_header(1)
            self.outcar.ml_block(cartesian, lattice, prediction.energy, prediction.forces, prediction.stress_kb,
                                 time.perf_counter() - clock)
            if self.step > 1:
                self.outcar.ionic_header(self.step)
            ml_only = not self.force_field.needs_dft(prediction, self.step)
            if ml_only:
                energy = prediction.energy
                self.last = IonicResult(
                    step=self.step, lattice=lattice.copy(), frac=frac.copy(), free_energy=energy,
                    energy_without_entropy=energy, energy_sigma0=energy, forces=prediction.forces,
                    stress_kb=prediction.stress_kb, converged=True,
                    efermi=self.last.efermi if self.last is not None else 0.0, de=0.0,
                    magnetization=self._magnetization(), scf_lines=[], seconds=time.perf_counter() - started)
                self.vasprun.begin_step()
                self.vasprun.ionic_step(self.last)
                structure = replace(self.job.structure, lattice=lattice)
                atomic_write(self.directory / "CONTCAR", format_poscar(structure, frac=frac))
        return bool(self.comm.bcast(ml_only))

    def _begin_scf(self, note: str) -> None:
        if self.step > 1:
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
            previous = self._last_scf_energy
            if previous is None:
                shown = replace(shown, de=shown.energy, deps=3.0 * shown.energy)
            else:
                shown = replace(shown, de=shown.energy - previous)
        self._last_scf_energy = shown.energy
        self.say(scf_line(shown.algorithm, shown.index, shown.energy, shown.de, shown.deps,
                          shown.ncg, shown.rms, shown.rms_charge), flush=True)
        self.oszicar.scf(shown)
        self.outcar.scf_iteration(self.step, shown, now - self._clock)
        self.vasprun.scf(shown, now - self._clock)
        self._clock = now
        self._scf_faults(line.index)
        # With the machine-learned force field on, VASP does not honour STOPCAR reliably (vasp-facts
        # §4): the fake ignores it altogether, so drivers must stop it with SIGINT.
        found = None if self.job.incar.get_bool("ML_LMLFF") else read_stopcar(self.directory)
        if found and self.stop is None:
            self.stop = found
        return self.stop == "LABORT"

    def _model_step(self, symbols, frac, lattice):
        """The SCF model: every rank iterates; rank 0 computes the physics and prints."""
        job, faults = self.job, self.faults
        clock = time.perf_counter()
        geometry = Geometry(symbols, frac @ lattice, lattice, cache=self._pairs)
        params = job.scf
        if faults.no_convergence_from_step and self.step >= faults.no_convergence_from_step:
            params = replace(params, noise=0.05)
        if self.step > 1 and job.scf.nelmdl < 0:
            params = replace(params, nelmdl=0)  # negative NELMDL: only at the first ionic step
        solver = ScfSolver(geometry, params, self.comm, charge=job.zval_total - job.nelect)
        guess, note = self.memory.start(frac, lattice)
        setup = time.perf_counter() - clock
        physics: PhysicsResult | None = None
        if self.comm.is_root:
            clock = time.perf_counter()
            physics = self.backend.compute(symbols, frac @ lattice, lattice, job.stress_requested)
            self._timings["physics"] = time.perf_counter() - clock
            self._begin_scf(note)
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
        outcome = solver.run(guess, after_line, self._work)
        self._timings["scf_model"] = setup + time.perf_counter() - clock
        outcome.lines = lines
        self.memory.remember(frac, lattice, solver.q_star)
        return physics, outcome, float(np.mean(geometry.chi))

    def _native_step(self, symbols, cartesian, lattice):
        """A backend with its own electronic loop (GPAW) runs on rank 0; the others wait."""
        job = self.job
        physics = outcome = None
        if self.comm.is_root:
            restart = self.directory / "WAVECAR.gpw"
            if self.step > 1:
                start, note = "memory", " bond charge predicted"
            elif job.istart > 0 and restart.is_file():
                start, note = "wavecar", ""
            else:
                start, note = "cold", ""
            self._begin_scf(note)
            kpts = self.job.kpoints.divisions or (1, 1, 1)
            physics, outcome = self.backend.run_scf(
                symbols, cartesian, lattice, start, restart, kpts, job.scf.ediff, job.scf.nelm,
                job.stress_requested, self._emit)
        self.comm.barrier()
        return physics, outcome, 0.0

    def _write_profile(self) -> None:
        """One JSON line per step: time from input read to prompt, and what the physics took."""
        if self._profile is None:
            return
        import json

        record = {"step": self.step, "prompt": time.perf_counter(), "natoms": self.job.natoms,
                  "scf_iterations": len(self.last.scf_lines) if self.last else 0, **self._timings}
        self._profile.write(json.dumps(record) + "\n")
        self._profile.flush()

    def _magnetization(self) -> float | None:
        if self.job.ispin != 2:
            return None
        moments = self.job.incar.get_floats("MAGMOM") or [1.0] * self.job.natoms
        return round(0.8 * float(sum(moments)), 4)

    def _print_forces(self, result: IonicResult) -> None:
        faults = self.faults
        garbage = faults.garbage_at_step == self.step
        self.say("FORCES:")
        if not garbage:
            self.out.write(vector_block(result.forces))
            return
        for k, force in enumerate(result.forces):
            if faults.garbage == "noise" and k == len(result.forces) // 2:
                self.say("\x1b[0m#@!& 0xDEADBEEF ~~~ MPI_ABORT was invoked on rank 3 ~~~")
            if faults.garbage == "overflow" and k == 0:
                self.say("  ************" + vector_line(force[1:]))
                continue
            self.say(vector_line(force))

    def _print_energy(self, result: IonicResult, de: float) -> None:
        result.de = de
        self.say(energy_line(result.step, result.free_energy, result.energy_sigma0, de, result.magnetization))
        self.oszicar.ionic(result)
        self.out.flush()

    # ---------------------------------------------------------------- faults and cost
    def _work(self) -> None:
        seconds = self.settings.scf_seconds
        if seconds <= 0:
            return
        deadline = time.perf_counter() + seconds
        block = np.ones((64, 64))
        while time.perf_counter() < deadline:
            block = np.tanh(block @ block * 1e-3)

    def _step_faults_before(self) -> None:
        faults = self.faults
        if faults.stderr_flood_bytes and faults.stderr_flood_at_step == self.step:
            line = "forrtl: warning (402): fort: (1): In call to SUB, an array temporary was created\n"
            written = 0
            while written < faults.stderr_flood_bytes:
                sys.stderr.write(line)
                written += len(line)
            sys.stderr.flush()
        if faults.garbage_at_step == self.step and faults.garbage == "chatter":
            self.say(" [mock-vasp] chatter: node17 says hello; MPI progress thread alive", flush=True)

    def _scf_faults(self, index: int) -> None:
        faults = self.faults
        if faults.slow_step_seconds and index <= 4:
            self.out.flush()
            time.sleep(faults.slow_step_seconds / 4)
        if faults.crash_at_step == self.step and index == 2:
            message = ERROR_MESSAGES.get(faults.crash_error, faults.crash_error)
            self.say(message, flush=True)
            self.sync_files()
            self.comm.abort(1)
        if faults.hang_at_step == self.step and index == 1:
            self.out.flush()
            while True:  # alive and silent, as a VASP stuck in a collective
                time.sleep(3600)
        if faults.signal_at_step == self.step and index == 2:
            self.out.flush()
            try:
                import resource

                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            except (ImportError, ValueError, OSError):
                pass
            os.kill(os.getpid(), getattr(signal, faults.signal, signal.SIGSEGV))
            time.sleep(10)

    # ---------------------------------------------------------------- end of run
    def _finish(self) -> None:
        if self.comm.is_root:
            if self.job.lwave and self.last is not None and self.native:
                self.say(" writing wavefunctions")
                self.backend.save(self.directory / "WAVECAR.gpw")
            elif self.job.lwave and self.last is not None:
                self.say(" writing wavefunctions")
                write_wavecar(self.directory / "WAVECAR", SavedWavefunction(
                    species=list(self.job.structure.species),
                    counts=list(self.job.structure.counts),
                    frac=self.last.frac,
                    lattice=self.last.lattice,
                    bond_charges=self.memory.history_q[-1],
                ))
            if self.stop is not None and (self.directory / "STOPCAR").exists():
                self.say(" deleting file STOPCAR")
                try:
                    (self.directory / "STOPCAR").unlink()
                except OSError:
                    pass
            seconds = time.perf_counter() - self.started
            self.outcar.finish(seconds)
            self.vasprun.finish(self.last)
            self.oszicar.file.close()
            self.out.flush()
        self.comm.barrier()
