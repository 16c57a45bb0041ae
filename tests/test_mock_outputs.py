"""Single points and VASP's own relaxations through ASE's Vasp; ASE and pymatgen read the files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.vasp import Vasp
from ase.io import read
from conftest import MOCK_VASP, run_quiet
from helpers import co_on_cu, write_inputs


def emt_reference(atoms):
    copy = atoms.copy()
    copy.calc = EMT()
    return copy.get_potential_energy(), copy.get_forces(apply_constraint=False), copy.get_stress()


@pytest.mark.slow
def test_single_point_through_ase_vasp(tmp_path):
    atoms = co_on_cu()
    calc = Vasp(directory=str(tmp_path), command=MOCK_VASP, xc="PBE", kpts=(2, 2, 1), encut=300,
                ismear=0, sigma=0.1, isif=2)
    atoms.calc = calc
    stress = atoms.get_stress()
    energy, ref_forces, ref_stress = emt_reference(atoms)
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(energy, abs=1e-6)
    entropy = 0.05 * len(atoms) * 0.1**2
    assert atoms.get_potential_energy() == pytest.approx(energy + entropy / 2, abs=1e-6)
    assert np.abs(atoms.get_forces(apply_constraint=False) - ref_forces).max() < 1e-6  # caller's order
    assert np.abs(stress - ref_stress).max() < 1e-6
    assert calc.get_number_of_iterations() > 5
    assert calc.read_version().startswith("6.4")


@pytest.mark.slow
def test_readers_agree_with_backend(tmp_path):
    atoms = co_on_cu()
    write_inputs(tmp_path, atoms, kpts=(2, 2, 1), isif=2, ismear=0, sigma=0.05)
    done = run_quiet([MOCK_VASP], cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:]
    sorted_atoms = read(tmp_path / "POSCAR")
    energy, forces, stress = emt_reference(sorted_atoms)

    outcar = read(tmp_path / "OUTCAR", format="vasp-out")
    assert outcar.get_potential_energy(force_consistent=True) == pytest.approx(energy, abs=1e-6)
    assert np.abs(outcar.get_forces(apply_constraint=False) - forces).max() < 2e-6  # 6 decimals in OUTCAR
    assert np.abs(outcar.get_stress() - stress).max() < 1e-6
    assert outcar.get_chemical_symbols() == sorted_atoms.get_chemical_symbols()

    xml = read(tmp_path / "vasprun.xml", format="vasp-xml")
    assert xml.get_potential_energy(force_consistent=True) == pytest.approx(energy, abs=1e-6)
    assert np.abs(xml.get_forces(apply_constraint=False) - forces).max() < 1e-7
    assert len(xml.constraints) == 1  # selective dynamics survive the round trip

    from pymatgen.io.vasp import Oszicar, Outcar, Vasprun

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vasprun = Vasprun(tmp_path / "vasprun.xml")
        pm_outcar = Outcar(tmp_path / "OUTCAR")
        oszicar = Oszicar(tmp_path / "OSZICAR")
    assert vasprun.converged_electronic
    assert vasprun.ionic_steps[-1]["e_fr_energy"] == pytest.approx(energy, abs=1e-6)
    assert np.abs(np.array(vasprun.ionic_steps[-1]["forces"]) - forces).max() < 1e-7
    assert pm_outcar.final_fr_energy == pytest.approx(energy, abs=1e-6)
    assert pm_outcar.data["nbands"] > 0 and pm_outcar.run_stats["Elapsed time (sec)"] >= 0
    assert oszicar.ionic_steps[-1]["F"] == pytest.approx(energy, abs=1e-5)
    scf_lines = [line for line in done.stdout.splitlines() if line.startswith("DAV:")]
    assert len(oszicar.electronic_steps[0]) == len(scf_lines)


@pytest.mark.slow
@pytest.mark.parametrize("ibrion", [1, 2])
def test_vasp_relaxation_force_criterion(tmp_path, ibrion):
    atoms = co_on_cu()
    fixed = atoms.constraints[0].index
    write_inputs(tmp_path, atoms, ibrion=ibrion, nsw=120, ediffg=-0.05, potim=0.5)
    done = run_quiet([MOCK_VASP], cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "reached required accuracy" in done.stdout
    steps = read(tmp_path / "OUTCAR", format="vasp-out", index=":")
    final = steps[-1]
    assert len(steps) > 3
    contcar = read(tmp_path / "CONTCAR")
    poscar = read(tmp_path / "POSCAR")
    moved = np.linalg.norm(contcar.positions - poscar.positions, axis=1)
    # selective dynamics: fixed atoms (F F F in POSCAR) never move
    flags = np.array([c.index for c in poscar.constraints][0]) if poscar.constraints else np.array([], int)
    assert len(flags) == len(fixed)
    assert np.all(moved[flags] < 1e-9)
    free = np.setdiff1d(np.arange(len(poscar)), flags)
    assert np.linalg.norm(final.get_forces(apply_constraint=False)[free], axis=1).max() < 0.05
    assert steps[-1].get_potential_energy() < steps[0].get_potential_energy()


@pytest.mark.slow
def test_energy_criterion_and_nsw_limit(tmp_path):
    atoms = co_on_cu()
    write_inputs(tmp_path / "energy", atoms, ibrion=2, nsw=100, ediffg=1e-3)
    done = run_quiet([MOCK_VASP], cwd=tmp_path / "energy", timeout=300)
    assert "reached required accuracy" in done.stdout
    energies = [float(line.split()[2]) for line in done.stdout.splitlines() if " F= " in line]
    assert abs(energies[-1] - energies[-2]) < 1e-3
    write_inputs(tmp_path / "limit", atoms, ibrion=2, nsw=4, ediffg=-0.001)
    done = run_quiet([MOCK_VASP], cwd=tmp_path / "limit", timeout=300)
    assert done.returncode == 0
    assert "reached required accuracy" not in done.stdout
    assert len([line for line in done.stdout.splitlines() if " F= " in line]) == 4


@pytest.mark.slow
def test_block_buffered_files_lag_behind_stdout(tmp_path):
    from helpers import RawVasp

    atoms = co_on_cu()
    write_inputs(tmp_path, atoms, interactive=True, nsw=10, ibrion=-1, potim=0.0,
                 settings={"block_buffered": True})
    raw = RawVasp([MOCK_VASP], tmp_path)
    try:
        raw.until_prompt()
        raw.send_frac(read(tmp_path / "POSCAR").get_scaled_positions())
        raw.until_prompt()
        size = (tmp_path / "OUTCAR").stat().st_size
        assert size % 8192 == 0
        complete = read(tmp_path / "OUTCAR", format="vasp-out", index=":")
        assert len(complete) < 2  # the newest step is not in the file yet, stdout has both
        assert sum(" F= " in line for line in raw.lines) == 2
        assert (tmp_path / "vasprun.xml").stat().st_size % 8192 == 0
    finally:
        raw.process.kill()
        raw.finish()
