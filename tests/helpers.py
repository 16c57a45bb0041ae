"""Builders of test systems and run directories for the fake VASP."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, fcc111, molecule
from ase.constraints import FixAtoms


def co_on_cu(size=(2, 2, 3), vacuum=6.0) -> Atoms:
    slab = fcc111("Cu", size, vacuum=vacuum)
    add_adsorbate(slab, molecule("CO"), 1.9, "ontop")
    slab.pbc = True
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag >= 2]))
    return slab


def co_on_copper() -> Atoms:
    """CO on Cu(111) 2x2x3, bottom layer fixed, rattled 0.05 A (seed 1): issue 10's new-user case."""
    slab = fcc111("Cu", (2, 2, 3), vacuum=7.0)
    add_adsorbate(slab, molecule("CO"), 1.9, "fcc")
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag == 3]))
    slab.rattle(0.05, seed=1)
    return slab


def write_inputs(directory: Path, atoms: Atoms, settings: dict | None = None, **incar) -> Path:
    """INCAR/POSCAR/KPOINTS/POTCAR through ASE's own input writer, plus mock_vasp.json."""
    from ase.calculators.vasp.create_input import GenerateVaspInput

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generator = GenerateVaspInput()
    params = {"xc": "PBE", "kpts": (1, 1, 1), "encut": 300}
    params.update(incar)
    generator.set(**params)
    generator.initialize(atoms)
    generator.write_input(atoms, directory=str(directory))
    if settings:
        (directory / "mock_vasp.json").write_text(json.dumps(settings))
    return directory


class RawVasp:
    """A fake VASP run driven by hand over pipes, for protocol-level tests."""

    def __init__(self, command: list[str], directory: Path, timeout: float = 30.0, env=None):
        self.process = subprocess.Popen(command, cwd=directory, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, bufsize=1, env=env)
        self.timeout = timeout
        self.lines: list[str] = []
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in iter(self.process.stdout.readline, ""):
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def read_until(self, predicate, limit: int = 100000) -> list[str]:
        """Lines up to the first matching one; stops at EOF ('<EOF>') or after ``timeout`` seconds."""
        got: list[str] = []
        deadline = time.monotonic() + self.timeout
        while len(got) < limit:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                got.append("<EOF>")
                self._queue.put(None)
                break
            got.append(line)
            self.lines.append(line)
            if predicate(line):
                break
        return got

    def until_prompt(self) -> list[str]:
        return self.read_until(lambda line: line.strip().endswith("reading from stdin"))

    def send(self, text: str) -> None:
        self.process.stdin.write(text)
        self.process.stdin.flush()

    def send_frac(self, frac: np.ndarray) -> None:
        self.send("".join(f"{x:.16f} {y:.16f} {z:.16f}\n" for x, y, z in frac))

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the exit (killing after ``timeout``); keeps stderr in ``self.stderr``."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if not hasattr(self, "stderr"):
            self.stderr = self.process.stderr.read()
        for stream in (self.process.stdin, self.process.stderr):
            try:
                stream.close()
            except (OSError, BrokenPipeError):
                pass
        return self.process.returncode


def fixed_surrogate(predict):
    """A surrogate that never learns: ``predict(atoms) -> (energy, forces)`` under every fit."""
    from finetuna_core.surrogates.base import FineTuneReport, Prediction, Surrogate

    class _Fixed(Surrogate):
        def predict(self, atoms):
            energy, forces = predict(atoms)
            return Prediction(energy=energy, forces=forces)

        def fine_tune(self, points):
            return FineTuneReport("none", len(points), 0.0)

        def reset(self):
            pass

        def save(self, path):
            raise NotImplementedError

        @classmethod
        def load(cls, path):
            raise NotImplementedError

    return _Fixed()


class BiasedEMT:
    """A surrogate that never learns: EMT plus a constant force on the adsorbate (eV/A)."""

    def __new__(cls, bias):
        from ase.calculators.emt import EMT

        def predict(atoms):
            work = atoms.copy()
            work.calc = EMT()
            forces = work.get_forces(apply_constraint=False)
            forces[-1] += bias
            return work.get_potential_energy() - float(np.dot(bias, atoms.positions[-1])), forces

        return fixed_surrogate(predict)


def al_diffusion():
    """Au on Al(100) hopping between hollow sites, both ends relaxed with EMT (a NEB test case)."""
    from ase.build import fcc100
    from ase.calculators.emt import EMT
    from ase.optimize import BFGS

    slab = fcc100("Al", size=(2, 2, 3))
    add_adsorbate(slab, "Au", 1.7, "hollow")
    slab.center(axis=2, vacuum=4.0)
    slab.pbc = True
    slab.set_constraint(FixAtoms(mask=[atom.tag > 1 for atom in slab]))
    initial = slab.copy()
    initial.calc = EMT()
    BFGS(initial, logfile=None).run(fmax=0.01)
    final = slab.copy()
    final[-1].x += final.get_cell()[0, 0] / 2
    final.calc = EMT()
    BFGS(final, logfile=None).run(fmax=0.01)
    initial.calc = final.calc = None
    return initial, final


def write_structures(directory: Path, count: int) -> dict[str, str]:
    """``count`` small adsorbate-slab structures as .traj files (name -> path), for campaign tests."""
    from ase.io import write

    directory.mkdir(parents=True, exist_ok=True)
    combos = [("Cu", "O"), ("Pt", "N"), ("Ag", "C"), ("Ni", "O"), ("Pd", "N"), ("Au", "C")]
    paths = {}
    for metal, adsorbate in combos[:count]:
        slab = fcc111(metal, (2, 2, 3), vacuum=6.0)
        add_adsorbate(slab, adsorbate, 1.4, "fcc")
        slab.positions[-1, 0] += 0.3
        slab.pbc = True
        slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag >= 2]))
        path = directory / f"{adsorbate}_{metal}.traj"
        write(path, slab)
        paths[path.stem] = str(path)
    return paths


def wait_for(predicate, seconds: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``seconds`` pass; its last value."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class AnalyticParent:
    """An ASE calculator whose energy is ``energy(positions)`` (a Python function of the (N, 3) positions).

    ``calls`` counts its force calls. Forces by central differences (step 1e-5 A), so any smooth
    landscape can be written as one expression.
    """

    def __new__(cls, energy):
        from ase.calculators.calculator import Calculator, all_changes

        class _Analytic(Calculator):
            implemented_properties = ["energy", "free_energy", "forces"]
            calls = 0

            def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
                Calculator.calculate(self, atoms, properties, system_changes)
                type(self).calls += 1
                self.results = analytic_results(energy, self.atoms.positions)

        return _Analytic()


def analytic_results(energy, positions: np.ndarray) -> dict:
    """Energy and central-difference forces of ``energy`` at ``positions``."""
    positions = np.asarray(positions, dtype=float)
    forces = np.zeros_like(positions)
    step = 1e-5
    for index in np.ndindex(positions.shape):
        up, down = positions.copy(), positions.copy()
        up[index] += step
        down[index] -= step
        forces[index] = -(energy(up) - energy(down)) / (2 * step)
    value = float(energy(positions))
    return {"energy": value, "free_energy": value, "forces": forces}


class AnalyticSurrogate:
    """A surrogate that never learns, predicting ``energy(positions)`` (see :class:`AnalyticParent`)."""

    def __new__(cls, energy):
        def predict(atoms):
            results = analytic_results(energy, atoms.positions)
            return results["energy"], results["forces"]

        return fixed_surrogate(predict)


def lone_atom(x: float = 0.0) -> Atoms:
    """One free atom at (x, 0, 0) beside a fixed one far away (the toy landscapes use the first atom)."""
    atoms = Atoms("HHe", positions=[(x, 0.0, 0.0), (0.0, 0.0, 8.0)], cell=[20, 20, 20], pbc=False)
    atoms.set_constraint(FixAtoms(indices=[1]))
    return atoms
