"""VASP's machine-learned force field through VaspInteractive, on the fake's ML_LMLFF mode.

The fake's force field (mock_vasp/physics/mlff.py) predicts every step, runs DFT on the first steps and
where its error estimate is above ML_CTIFOR, and writes both kinds of OUTCAR blocks in the layout
of the real 6.3.2 files (whose parsing is tested on the files themselves in test_outputs_followers).
"""

from __future__ import annotations

import signal
import warnings

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.io import read
from ase.optimize import BFGS
from conftest import MOCK_VASP, mock_processes
from helpers import co_on_cu

from vasp_interactive import MlStepRefused, VaspInteractive
from vasp_interactive.outputs import read_outcar

PARAMS = dict(xc="PBE", kpts=(1, 1, 1), encut=300, ediff=1e-6, ml_lmlff=True,
              custom={"ml_mode": "train", "ml_ctifor": 0.2})
SURFACE_ATOM = 9  # a free top-layer Cu atom away from the CO: soft, so 1 mA moves are left to the force field


@pytest.mark.slow
def test_force_field_steps_are_labelled_and_read_back(tmp_path):
    atoms = co_on_cu()
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path, **PARAMS) as calc:
        atoms.calc = calc
        BFGS(atoms, logfile=None).run(fmax=0.05, steps=60)
        steps = list(calc.steps)
        session = calc.session
        pid = session.process.pid
    sources = [s.source for s in steps]
    assert sources[:2] == ["dft", "dft"] and "ml" in sources  # DFT first, then the force field where it may
    assert all((s.scf_iterations == 0) == (s.source == "ml") for s in steps)
    for step in steps:
        assert step.ml_energy is not None  # every step is predicted first (an untrained field says 0)
        assert (step.dft_energy is None) == (step.source == "ml")
        if step.source == "ml":
            assert step.free_energy == pytest.approx(step.ml_energy, abs=1e-6)
        else:
            assert step.free_energy == pytest.approx(step.dft_energy)
    assert steps[0].ml_energy == 0.0
    # the whole OUTCAR: ASE cannot read it (as with real VASP); our reader returns every step once
    with pytest.raises(Exception):  # noqa: B017 - ASE raises ValueError or ParseError on these files
        read(tmp_path / "OUTCAR", format="vasp-out", index=":")
    frames = read_outcar(tmp_path / "OUTCAR")
    assert [a.info["source"] for a in frames] == sources
    assert [a.get_potential_energy(force_consistent=True) for a in frames] == pytest.approx(
        [s.free_energy for s in steps], abs=1e-6)
    # a DFT step's numbers are the parent's physics (EMT here); an ML step's are the force field's guess
    reference = frames[-1].copy()
    reference.calc = EMT()
    ml_or_dft = frames[-1].info["source"]
    error = abs(frames[-1].get_potential_energy(force_consistent=True) - reference.get_potential_energy())
    assert error < (1e-4 if ml_or_dft == "dft" else 0.05)
    # STOPCAR is ignored with the force field on (as real VASP does not honour it reliably): SIGINT stops it
    assert session.process.returncode == -signal.SIGINT and not (tmp_path / "STOPCAR").exists()
    assert pid not in {p.pid for p in mock_processes()}


@pytest.mark.slow
def test_ml_steps_raise_refuses_a_force_field_answer(tmp_path):
    atoms = co_on_cu()
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path, ml_steps="raise", **PARAMS) as calc:
        atoms.calc = calc
        computed = 0
        with pytest.raises(MlStepRefused, match="without DFT"):
            for _ in range(6):
                atoms.positions[SURFACE_ATOM, 2] += 0.001
                atoms.get_forces()
                computed += 1
        assert computed == 2  # the first two steps are DFT; the third was answered by the force field
        assert [s.source for s in calc.steps] == ["dft", "dft", "ml"]
    assert not mock_processes()


@pytest.mark.slow
def test_ml_steps_dft_recomputes_with_the_force_field_off(tmp_path):
    atoms = co_on_cu()
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path, ml_steps="dft", **PARAMS) as calc:
        atoms.calc = calc
        energies = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(5):
                atoms.positions[SURFACE_ATOM, 2] += 0.001
                energies.append(atoms.get_potential_energy(force_consistent=True))
        assert calc.restarts == 1 and any("ML_LMLFF = .FALSE." in str(w.message) for w in caught)
        assert not calc.uses_force_field
        results = calc.steps
    # every energy handed to the caller is DFT (here: the fake's EMT physics)
    check = co_on_cu()
    for k, energy in enumerate(energies):
        check.positions[SURFACE_ATOM, 2] = co_on_cu().positions[SURFACE_ATOM, 2] + 0.001 * (k + 1)
        check.calc = EMT()
        assert energy == pytest.approx(check.get_potential_energy(), abs=1e-4)
    assert [s.source for s in results] == ["dft", "dft", "ml", "dft", "dft", "dft"]
    assert np.all([s.scf_iterations > 0 for s in results if s.source == "dft"])
