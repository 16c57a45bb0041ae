"""The run loop of the fake VASP: ionic steps in static, relaxation and interactive modes.

Each ionic step runs the SCF (the model of ``physics/scf.py``, or a backend's own loop), prints it
on stdout and in OUTCAR, OSZICAR and vasprun.xml, and writes CONTCAR.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import TextIO

import numpy as np

from ..config import MockSettings
from ..fortran import energy_line
from ..inputs.job import Job
from ..inputs.poscar import format_poscar
from ..inputs.stopcar import STOPCAR, StopRequest
from ..interactive import StdinReader, read_client_input
from ..mpi import Comm
from ..outputs.outcar import OutcarWriter
from ..outputs.outfiles import IonicResult, Oszicar, atomic_write
from ..outputs.vasprun import VasprunWriter
from ..physics.backend import Backend, NativeScfBackend
from ..physics.electrons import ElectronicMemory, SavedWavefunction, read_wavecar, write_wavecar
from ..physics.mlff import ForceField
from ..physics.relax import make_optimizer
from .electronic import NATIVE_WAVECAR, ElectronicLoop
from .faults import FaultInjector
from .messages import HARD_STOP, NELM_WARNING, SOFT_STOP, STOP_REACHED, setup_lines

KBAR_PER_EV_A3 = 1602.1766208
PROFILE_FILE = "mock_vasp.profile.jsonl"


class Run:
    """One VASP run. All ranks call every method; rank 0 alone reads stdin and writes files."""

    def __init__(self, comm: Comm, settings: MockSettings, job: Job, backend: Backend | None,
                 out: TextIO = sys.stdout, stdin: TextIO | None = None):
        self.comm = comm
        self.settings = settings
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
        self.last: IonicResult | None = None
        self._profile = None
        self._timings: dict[str, float] = {}
        if comm.is_root and settings.profile:
            self._profile = open(job.directory / PROFILE_FILE, "w")
        self.started = time.perf_counter()
        restart = None
        if job.istart > 0:
            restart = read_wavecar(self.directory / "WAVECAR")
            if restart is not None and (restart.species != job.structure.species
                                        or restart.counts != job.structure.counts):
                restart = None
        self.memory = ElectronicMemory(job.iwavpr, restart=restart)
        self.outcar = self.vasprun = self.oszicar = None
        if comm.is_root:
            blocks = settings.block_buffered
            version = settings.emulated_version
            self.outcar = OutcarWriter(self.directory, job, version, comm.size, blocks)
            self.vasprun = VasprunWriter(self.directory, job, version, blocks)
            self.oszicar = Oszicar(self.directory, blocks)
        self.faults = FaultInjector(settings.faults, settings.scf_seconds, comm, out, self.sync_files)
        self.electrons = ElectronicLoop(comm, job, backend, self.memory, self.faults, self.say,
                                        self.outcar, self.vasprun, self.oszicar)

    @property
    def stop(self) -> StopRequest | None:
        """The stop a STOPCAR asked for during this run, or None."""
        return self.electrons.stop

    # ---------------------------------------------------------------- output helpers
    def say(self, text: str, flush: bool = False) -> None:
        """Print one line on stdout (rank 0 only)."""
        if self.comm.is_root:
            self.out.write(text + "\n")
            if flush:
                self.out.flush()

    def sync_files(self) -> None:
        """Push the output files and stdout out, as VASP does when it waits."""
        if self.comm.is_root:
            for writer in (self.outcar, self.vasprun, self.oszicar):
                writer.file.sync()
            self.out.flush()

    # ---------------------------------------------------------------- modes
    def execute(self) -> int:
        """Run every ionic step the inputs ask for; returns the exit code (0)."""
        job = self.job
        self.say("\n".join(setup_lines(job.structure.species, job.natoms, self.memory.restart is not None)),
                 flush=True)
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
                    self.say(STOP_REACHED)
                    self.outcar.message(STOP_REACHED.strip())
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
        """One structure: SCF, forces, every output file. Returns the result on rank 0 (None elsewhere)."""
        self.step += 1
        started = time.perf_counter()
        job = self.job
        if self.comm.is_root:
            self.faults.before_step(self.step)
        if self.force_field is not None and self._force_field_step(frac, lattice, started):
            return self.last  # type: ignore[return-value]
        scf = self.electrons.run(self.step, frac, lattice)
        self._timings.update(scf.timings)
        if not self.comm.is_root:
            return None  # type: ignore[return-value]
        physics, outcome = scf.physics, scf.outcome
        if not outcome.converged and self.stop != "LABORT":
            self.say(NELM_WARNING)
        if self.stop == "LABORT":
            self.say(HARD_STOP)
        free = physics.energy + (0.0 if outcome.converged or self.electrons.native else outcome.excess_energy)
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
            efermi=-2.0 * scf.mean_electronegativity,
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
        self.say("FORCES:")
        self.out.write(self.faults.forces_block(self.step, result.forces))

    def _print_energy(self, result: IonicResult, de: float) -> None:
        result.de = de
        self.say(energy_line(result.step, result.free_energy, result.energy_sigma0, de, result.magnetization))
        self.oszicar.ionic(result)
        self.out.flush()

    # ---------------------------------------------------------------- end of run
    def _finish(self) -> None:
        if self.comm.is_root:
            if self.job.lwave and self.last is not None and isinstance(self.backend, NativeScfBackend):
                self.say(" writing wavefunctions")
                self.backend.save(self.directory / NATIVE_WAVECAR)
            elif self.job.lwave and self.last is not None:
                self.say(" writing wavefunctions")
                write_wavecar(self.directory / "WAVECAR", SavedWavefunction(
                    species=list(self.job.structure.species),
                    counts=list(self.job.structure.counts),
                    frac=self.last.frac,
                    lattice=self.last.lattice,
                    bond_charges=self.memory.history_q[-1],
                ))
            if self.stop is not None and (self.directory / STOPCAR).exists():
                self.say(" deleting file STOPCAR")
                try:
                    (self.directory / STOPCAR).unlink()
                except OSError:
                    pass
            if self._profile is not None:
                self._profile.close()
            seconds = time.perf_counter() - self.started
            self.outcar.finish(seconds)
            self.vasprun.finish(self.last)
            self.oszicar.file.close()
            self.out.flush()
        self.comm.barrier()
