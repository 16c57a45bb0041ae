"""VaspInteractive against the fake VASP: optimizers, variants, sorting, restarts, budgets."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.io import read
from ase.optimize import BFGS, FIRE
from conftest import MOCK_VASP, SHARED, mock_processes
from helpers import co_on_cu

from vasp_interactive import RestartRefused, VaspExited, VaspInteractive, VaspSetupError

PARAMS = dict(xc="PBE", kpts=(1, 1, 1), encut=300, ediff=1e-6)


def relax_reference(atoms, fmax=0.03, cell=False):
    copy = atoms.copy()
    copy.calc = EMT()
    opt = BFGS(FrechetCellFilter(copy) if cell else copy, logfile=None)
    opt.run(fmax=fmax, steps=200)
    return copy, opt.nsteps


@pytest.mark.slow
@pytest.mark.parametrize("version", ["5.4.4", "6.1.2", "6.3.2+lattice", "6.4.2"])
def test_bfgs_matches_backend(tmp_path, monkeypatch, version):
    monkeypatch.setenv("MOCK_VASP_VERSION", version)
    atoms = co_on_cu()
    reference, steps = relax_reference(atoms)
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path, **PARAMS) as calc:
        atoms.calc = calc
        opt = BFGS(atoms, logfile=None)
        opt.run(fmax=0.03, steps=200)
        assert calc.session.version.startswith(version.split("+")[0])
        energy = atoms.get_potential_energy(force_consistent=True)
    assert opt.nsteps == steps
    assert energy == pytest.approx(reference.get_potential_energy(force_consistent=True), abs=1e-5)
    assert np.abs(atoms.positions - reference.positions).max() < 1e-4
    assert calc.restarts == 0 and len(calc.steps) == steps + 1
    assert calc.steps[0].scf_iterations > max(s.scf_iterations for s in calc.steps[1:])
    assert (tmp_path / "WAVECAR").is_file() and not (tmp_path / "STOPCAR").exists()
    assert "writing wavefunctions" in (tmp_path / "vasp.out").read_text()


@pytest.mark.slow
def test_cell_relaxation_streams_lattice_on_64_isif3(tmp_path, monkeypatch):
    monkeypatch.setenv("MOCK_VASP_VERSION", "6.4.2")
    atoms = Atoms("Cu4", cell=np.eye(3) * 3.75, pbc=True,
                  scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    atoms.rattle(0.05, seed=3)
    reference, _ = relax_reference(atoms, fmax=0.01, cell=True)
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path, isif=3, **PARAMS) as calc:
        atoms.calc = calc
        BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=0.01, steps=200)
        assert calc.session.variant.value == "poscar-record"
    assert calc.restarts == 0
    assert atoms.get_volume() == pytest.approx(reference.get_volume(), rel=1e-4)
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(
        reference.get_potential_energy(force_consistent=True), abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("version, streams", [("6.3.2+lattice", True), ("6.4.2", False), ("6.1.2", False)])
def test_cell_changes_stream_or_restart(tmp_path, monkeypatch, version, streams):
    monkeypatch.setenv("MOCK_VASP_VERSION", version)
    atoms = Atoms("Cu4", cell=np.eye(3) * 3.7, pbc=True,
                  scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path, isif=2, **PARAMS) as calc:
        atoms.calc = calc
        energies = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for scale in (1.0, 1.01, 1.02, 1.03):
                atoms.set_cell(np.eye(3) * 3.7 * scale, scale_atoms=True)
                energies.append(atoms.get_potential_energy(force_consistent=True))
        restart_warnings = [w for w in caught if "restarts VASP" in str(w.message)]
        assert calc.restarts == (0 if streams else 3)
        assert len(restart_warnings) == calc.restarts
    for energy, scale in zip(energies, (1.0, 1.01, 1.02, 1.03)):
        check = atoms.copy()
        check.set_cell(np.eye(3) * 3.7 * scale, scale_atoms=True)
        check.calc = EMT()
        assert energy == pytest.approx(check.get_potential_energy(), abs=1e-6)


@pytest.mark.slow
def test_what_vasp_does_with_a_cell_outlives_a_restart(tmp_path, monkeypatch):
    """6.1.2 reads no lattice: learnt at the first exchange, kept by the VASP started when NSW ran out,
    so the cell change after it restarts VASP at once instead of probing it again."""
    from vasp_interactive.protocol import LatticeCapability

    monkeypatch.setenv("MOCK_VASP_VERSION", "6.1.2")
    atoms = Atoms("Cu4", cell=np.eye(3) * 3.7, pbc=True,
                  scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path, nsw=2, **PARAMS) as calc:
        atoms.calc = calc
        atoms.get_potential_energy()
        assert calc.session.lattice_capability is LatticeCapability.UNKNOWN  # a POSITIONS prompt alone
        atoms.positions[0, 0] += 0.01
        atoms.get_potential_energy()
        first = calc.session
        assert first.lattice_capability is LatticeCapability.CANNOT and first.exhausted
        atoms.positions[0, 0] += 0.01
        atoms.get_potential_energy()  # NSW spent: a new VASP, silently
        assert calc.session is not first and calc.restarts == 1
        second = calc.session
        assert second.lattice_capability is LatticeCapability.CANNOT
        atoms.set_cell(np.eye(3) * 3.72, scale_atoms=True)
        with pytest.warns(UserWarning, match="cannot stream a lattice"):
            energy = atoms.get_potential_energy(force_consistent=True)
        assert calc.restarts == 2
        assert second.process.returncode == 0  # stopped cleanly: a probe would have been killed mid-step
    check = atoms.copy()
    check.calc = EMT()
    assert energy == pytest.approx(check.get_potential_energy(), abs=1e-6)


@pytest.mark.slow
def test_a_lattice_echo_other_than_sent_is_refused(tmp_path, monkeypatch):
    """A lattice-patch transcript recorded from the fake, replayed with one echoed number changed."""
    from vasp_interactive import VaspProtocolError

    monkeypatch.setenv("MOCK_VASP_VERSION", "6.3.2+lattice")
    atoms = Atoms("Cu4", cell=np.eye(3) * 3.7, pbc=True,
                  scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])

    def two_cells(directory, command):
        with VaspInteractive(command=command, directory=directory, txt="vasp.out", **PARAMS) as calc:
            atoms.calc = calc
            for scale in (1.0, 1.01):
                atoms.set_cell(np.eye(3) * 3.7 * scale, scale_atoms=True)
                atoms.get_potential_energy()

    two_cells(tmp_path / "record", MOCK_VASP)
    transcript = (tmp_path / "record" / "vasp.out").read_text()
    sent = "%13.7f" % (3.7 * 1.01)
    assert transcript.count("   " + sent) >= 1  # the New block's first row starts with the sent a
    tampered = tmp_path / "tampered.out"
    tampered.write_text(transcript.replace("   " + sent, "   " + "%13.7f" % (3.7 * 1.011), 1))
    with pytest.raises(VaspProtocolError, match="echoed a lattice other than the one sent"):
        two_cells(tmp_path / "replay", [MOCK_VASP, "--replay", str(tampered)])
    two_cells(tmp_path / "control", [MOCK_VASP, "--replay", str(tmp_path / "record" / "vasp.out")])


@pytest.mark.slow
def test_restart_policy_error(tmp_path, monkeypatch):
    from vasp_interactive import RestartPolicy

    monkeypatch.setenv("MOCK_VASP_VERSION", "6.4.2")
    atoms = Atoms("Cu4", cell=np.eye(3) * 3.7, pbc=True,
                  scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path, restart=RestartPolicy(cell="error"),
                         **PARAMS) as calc:
        atoms.calc = calc
        atoms.get_potential_energy()
        atoms.set_cell(np.eye(3) * 3.75, scale_atoms=True)
        with pytest.raises(RestartRefused, match="cell changed"):
            atoms.get_potential_energy()  # 6.4.2 with ISIF 2 reads no lattice: probed, then refused


@pytest.mark.slow
def test_interleaved_species_are_mapped_back(shared, tmp_path):
    water = read(shared / "fixtures/structures/TIP4P-2.xyz")
    symbols = water.get_chemical_symbols()
    assert symbols != sorted(symbols, key=lambda s: symbols.index(s))  # O and H interleave
    water.center(vacuum=4.0)
    water.pbc = True
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path, **PARAMS) as calc:
        for shift in (0.0, 0.02):
            water.positions[1] += shift
            water.calc = calc
            forces = water.get_forces()
            reference = water.copy()
            reference.calc = EMT()
            assert np.abs(forces - reference.get_forces()).max() < 1e-6
            assert water.get_potential_energy(force_consistent=True) == pytest.approx(
                reference.get_potential_energy(), abs=1e-6)
    poscar = read(tmp_path / "POSCAR")
    assert poscar.get_chemical_symbols() == sorted(symbols, key=lambda s: symbols.index(s))


@pytest.mark.slow
def test_nsw_budget_restarts_transparently(tmp_path):
    atoms = co_on_cu()
    reference, steps = relax_reference(atoms)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with VaspInteractive(command=MOCK_VASP, directory=tmp_path, nsw=4, **PARAMS) as calc:
            atoms.calc = calc
            BFGS(atoms, logfile=None).run(fmax=0.03, steps=200)
    assert not [w for w in caught if "VaspInteractive" in str(w.message)]  # an NSW restart is silent
    assert calc.restarts == (steps + 1 - 1) // 4
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(
        reference.get_potential_energy(force_consistent=True), abs=1e-5)
    later_starts = [calc.steps[i].scf_iterations for i in range(4, len(calc.steps), 4)]
    assert max(later_starts) < calc.steps[0].scf_iterations  # restarts read the WAVECAR


@pytest.mark.slow
def test_parameter_and_species_changes_restart(tmp_path):
    atoms = co_on_cu()
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path, **PARAMS) as calc:
        atoms.calc = calc
        first = atoms.get_potential_energy()
        with pytest.warns(UserWarning, match="parameters changed"):
            calc.set(ediff=1e-5)
            assert atoms.get_potential_energy() == pytest.approx(first, abs=1e-6)
        assert calc.restarts == 1
        assert "EDIFF = 1.00e-05" in (tmp_path / "INCAR").read_text()
        atoms[0].symbol = "Ni"
        with pytest.warns(UserWarning, match="numbers changed"):
            energy = atoms.get_potential_energy()
        reference = atoms.copy()
        reference.calc = EMT()
        assert energy == pytest.approx(reference.get_potential_energy() + 0.5 * 0.05 * len(atoms) * 0.2**2, abs=1e-6)
        assert calc.restarts == 2


@pytest.mark.slow
def test_two_calculators_at_once(tmp_path):
    first, second = co_on_cu(), co_on_cu()
    second.positions[-1] += [0.1, 0.0, 0.0]
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path / "a", **PARAMS) as calc_a, \
            VaspInteractive(command=MOCK_VASP, directory=tmp_path / "b", **PARAMS) as calc_b:
        first.calc, second.calc = calc_a, calc_b
        opt_a, opt_b = FIRE(first, logfile=None), FIRE(second, logfile=None)
        for _ in range(15):
            opt_a.run(fmax=0.03, steps=1)
            opt_b.run(fmax=0.03, steps=1)
        for atoms in (first, second):
            reference = atoms.copy()
            reference.calc = EMT()
            assert np.abs(atoms.get_forces() - reference.get_forces()).max() < 1e-6
        assert calc_a.session.process.pid != calc_b.session.process.pid


@pytest.mark.slow
def test_close_is_idempotent_and_calculator_reusable(tmp_path):
    atoms = co_on_cu()
    calc = VaspInteractive(command=MOCK_VASP, directory=tmp_path, **PARAMS)
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    pid = calc.session.process.pid
    calc.close()
    calc.close()
    assert not [p for p in mock_processes() if p.pid == pid]
    atoms.positions[-1, 2] += 0.01
    atoms.get_potential_energy()
    assert calc.session.process.pid != pid
    calc.close()
    assert energy != atoms.get_potential_energy()  # cached result of the moved structure


@pytest.mark.slow
def test_safety_net_stops_forgotten_vasp(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(SHARED.parent / "main" / "tests")!r})
        sys.path.insert(0, {str(tmp_path)!r})
        from helpers import co_on_cu
        from vasp_interactive import VaspInteractive
        atoms = co_on_cu()
        atoms.calc = VaspInteractive(command={MOCK_VASP!r}, directory={str(tmp_path)!r}, xc="PBE")
        atoms.get_potential_energy()
        print(atoms.calc.session.process.pid, flush=True)
    """)
    tests_dir = str(__import__("pathlib").Path(__file__).parent)
    script = script.replace(str(SHARED.parent / "main" / "tests"), tests_dir)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.split()[-1])
    assert not [p for p in mock_processes() if p.pid == pid]
    assert "writing wavefunctions" in (tmp_path / "vasp.out").read_text()  # a clean STOPCAR stop


def test_replay_of_real_vasp544_bytes(shared, tmp_path):
    transcript = shared / "fixtures/vasp/vasp544_truncated/step-1/vasp.out"
    h2 = Atoms("H2", cell=np.eye(3) * 8.0, pbc=True, scaled_positions=[[0.12, 0, 0], [0, 0, 0]])
    with VaspInteractive(command=[MOCK_VASP, "--replay", str(transcript)], directory=tmp_path, **PARAMS) as calc:
        h2.calc = calc
        assert h2.get_potential_energy(force_consistent=True) == pytest.approx(-6.2323928)
        assert np.allclose(h2.get_forces(), [[-3.6669864, 0, 0.0000009], [3.6669864, 0, -0.0000009]])
        h2.positions[0, 0] -= 0.0025
        assert h2.get_potential_energy(force_consistent=True) == pytest.approx(-6.2232316)
        assert calc.steps[-1].scf_iterations == 2
        h2.positions[0, 0] -= 0.0025
        with pytest.raises(VaspExited, match="exit code: 0"):
            h2.get_potential_energy()


def test_setup_errors_come_before_any_launch(tmp_path):
    atoms = co_on_cu()
    with pytest.raises(VaspSetupError, match="not found"):
        VaspInteractive(command="no-such-vasp-binary", directory=tmp_path, **PARAMS)
    with pytest.raises(VaspSetupError, match="redirects"):
        VaspInteractive(command=f"{MOCK_VASP} > vasp.out", directory=tmp_path, **PARAMS)
    with pytest.raises(VaspSetupError, match="NSW = 1"):
        VaspInteractive(command=MOCK_VASP, directory=tmp_path, nsw=1, **PARAMS)
    with pytest.raises(VaspSetupError, match="no VASP command"):
        VaspInteractive(directory=tmp_path, **PARAMS)
    with pytest.warns(UserWarning, match="IBRION = -1"):
        VaspInteractive(command=MOCK_VASP, directory=tmp_path, ibrion=2, **PARAMS)
    calc = VaspInteractive(command=MOCK_VASP, directory=tmp_path, **PARAMS)
    atoms.pbc = [True, True, False]
    atoms.calc = calc
    with pytest.raises(VaspSetupError, match="non-periodic"):
        atoms.get_potential_energy()
    assert calc.session is None


@pytest.mark.slow
def test_command_from_ase_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("ASE_VASP_COMMAND", MOCK_VASP)
    atoms = co_on_cu()
    with VaspInteractive(directory=tmp_path, **PARAMS) as calc:
        atoms.calc = calc
        atoms.get_potential_energy()
        assert calc.argv == [MOCK_VASP]


@pytest.mark.slow
def test_fresh_process_per_step_costs_more_scf(tmp_path):
    """The point of the interactive mode, on the code: ASE's ``Vasp`` (a fresh fake VASP per step) needs
    more SCF iterations for the same structures than one VaspInteractive session."""
    from ase.calculators.vasp import Vasp

    atoms = co_on_cu()
    base = atoms.positions.copy()
    moves = [np.zeros_like(base)] + [np.random.default_rng(k).normal(scale=0.01, size=base.shape) for k in range(4)]

    def scf_per_structure(calc, count) -> list[int]:
        counts = []
        for move in moves:
            atoms.positions = base + move
            atoms.calc = calc
            atoms.get_potential_energy()
            counts.append(count(calc))
        return counts

    fresh = scf_per_structure(Vasp(command=MOCK_VASP, directory=tmp_path / "fresh", ibrion=-1, nsw=0, **PARAMS),
                              lambda calc: calc.get_number_of_iterations())
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path / "interactive", **PARAMS) as calc:
        interactive = scf_per_structure(calc, lambda calc: calc.steps[-1].scf_iterations)
        assert calc.restarts == 0
    assert fresh[0] == interactive[0]  # the same first structure from scratch
    assert sum(fresh[1:]) > 1.3 * sum(interactive[1:])
    assert all(f > i for f, i in zip(fresh[1:], interactive[1:]))


@pytest.mark.slow
def test_a_potcar_library_per_calculator_leaves_the_environment_alone(tmp_path, monkeypatch, potcar_dir):
    import os

    from finetuna_core.parents import make_parent

    monkeypatch.delenv("VASP_PP_PATH")
    with pytest.raises(VaspSetupError, match="pp_path .* is not a directory"):
        VaspInteractive(command=MOCK_VASP, directory=tmp_path, pp_path=tmp_path / "none", **PARAMS)
    with make_parent("mock", tmp_path / "mock", vasp_parameters=PARAMS, pp_path=potcar_dir) as calc:
        atoms = co_on_cu()
        atoms.calc = calc
        assert np.isfinite(atoms.get_potential_energy())
    assert "VASP_PP_PATH" not in os.environ  # the library was lent for writing POTCAR, then taken back
    assert (tmp_path / "mock" / "POTCAR").read_text().count("End of Dataset") == 3  # Cu, C, O
