"""Incremental OUTCAR / vasprun.xml readers on real (truncated) VASP files."""

from __future__ import annotations

import numpy as np
import pytest
from ase.io import read
from ase.units import GPa

from vasp_interactive.outputs import OutcarFollower, VasprunFollower


def test_truncated_vasp544_outcar(shared, tmp_path):
    """The 5.4.4 files stop at an 8 KiB boundary: step 1 is complete, step 2 is missing."""
    step1 = shared / "fixtures/vasp/vasp544_truncated/step-1"
    follower = OutcarFollower(step1 / "OUTCAR")
    assert follower.update() == 1
    expected = -np.array([-12.90666, -1.48004, -1.48004, 0.0, -0.0, 0.0]) * 0.1 * GPa
    assert np.allclose(follower.stress[1], expected, atol=1e-8)
    assert follower.efermi[1] == pytest.approx(-8.4521)
    ase_steps = read(step1 / "OUTCAR", format="vasp-out", index=":")
    assert len(ase_steps) == follower.steps_completed
    assert np.allclose(ase_steps[0].get_stress(), follower.stress[1], atol=1e-8)
    step0 = OutcarFollower(shared / "fixtures/vasp/vasp544_truncated/step-0/OUTCAR")
    assert step0.update() == 0 and not step0.stress  # the only step is not flushed yet


def test_outcar_force_row_whose_fields_touch_keeps_its_step(shared, tmp_path):
    """A force too large for a blank before it (3F14.6, two atoms 0.23 A apart) runs the columns
    together; the step must keep its structure and forces, not vanish from ``read_outcar``."""
    from vasp_interactive.outputs import read_outcar

    text = (shared / "fixtures/vasp/vasp544_truncated/step-1/OUTCAR").read_text()
    row = "      0.95750      0.00000      0.00000        -3.666986      0.000000      0.000001"
    assert text.count(row) == 1
    touching = f"      0.95750      0.00000      0.00000 {762318.6875:14.6f}{1204096.875:14.6f}{-3.5:14.6f}"
    assert "762318.6875001204096.875000" in touching
    (tmp_path / "OUTCAR").write_text(text.replace(row, touching))
    frames = read_outcar(tmp_path / "OUTCAR")
    assert len(frames) == len(read_outcar(shared / "fixtures/vasp/vasp544_truncated/step-1/OUTCAR")) == 1
    assert frames[0].get_forces()[0] == pytest.approx([762318.6875, 1204096.875, -3.5])
    assert frames[0].positions[0] == pytest.approx([0.9575, 0.0, 0.0])
    # a force too large for its field (asterisks): the step keeps its structure, the force is unknown
    overflowed = "      0.95750      0.00000      0.00000**************      0.000000      0.000001"
    (tmp_path / "OUTCAR").write_text(text.replace(row, overflowed))
    frames = read_outcar(tmp_path / "OUTCAR")
    assert len(frames) == 1 and frames[0].positions[0] == pytest.approx([0.9575, 0.0, 0.0])
    assert np.isnan(frames[0].get_forces()[0, 0]) and frames[0].get_forces()[1, 0] == pytest.approx(3.666986)
    assert frames[0].get_potential_energy() == pytest.approx(read_outcar(
        shared / "fixtures/vasp/vasp544_truncated/step-1/OUTCAR")[0].get_potential_energy())


def test_vasprun_follower_on_truncated_file(shared):
    step1 = shared / "fixtures/vasp/vasp544_truncated/step-1"
    follower = VasprunFollower(step1 / "vasprun.xml")
    assert follower.update() == 1
    assert np.allclose(follower.stress[1][:3], -np.array([-12.90666474, -1.48003972, -1.48003984]) * 0.1 * GPa)


def test_growing_file_in_odd_chunks_equals_whole_read(shared, tmp_path):
    data = (shared / "fixtures/vasp/vasp544_truncated/step-1/OUTCAR").read_bytes()
    target = tmp_path / "OUTCAR"
    target.write_bytes(b"")
    follower = OutcarFollower(target)
    offset = 0
    for size in (5, 8191, 1, 4000, 12000, 3, len(data)):
        with open(target, "ab") as handle:
            handle.write(data[offset: offset + size])
        offset += size
        follower.update()
    whole = OutcarFollower(shared / "fixtures/vasp/vasp544_truncated/step-1/OUTCAR")
    whole.update()
    assert follower.steps_completed == whole.steps_completed == 1
    assert np.allclose(follower.stress[1], whole.stress[1])
    target.write_bytes(data[:1000])  # VASP restarted: the file shrank
    assert follower.update() == 0 and not follower.stress


# --- VASP's machine-learned force field (real VASP 6.3.2 OUTCARs in shared fixtures mlff/) ----------------
# Expected values written out by hand from the files: energies from the 'TOTEN' lines, stresses from the
# 'in kB' lines (ML block: under 'ML FORCE on cell'), forces from the TOTAL-FORCE tables.
def kbar(xx, yy, zz, xy, yz, zx):
    return -np.array([xx, yy, zz, yz, zx, xy]) * 0.1 * GPa


ISTART0 = {  # ML_ISTART = 0: every step is predicted by the (untrained) force field, then computed by DFT
    "source": ["dft", "dft"], "ml": [0.0, 0.0], "dft": [-6.69814944, -6.69241300],
    "stress": [kbar(-1.75517, -1.75517, -0.30398, 0, 0, 0), kbar(-1.69265, -1.69265, 0.57098, 0, 0, 0)],
    "force_z": [0.456297, 0.790714], "z": [0.36858, 0.36400], "efermi": [-9.3658, -9.4200],
}
ISTART2 = {  # ML_ISTART = 2: inference only
    "source": ["ml", "ml", "ml"], "ml": [-6.81086173, -6.76280312, -6.75672861], "dft": [None, None, None],
    "stress": [kbar(0, 0, -12.36758, 0, 0, 0), kbar(0, 0, -12.65440, 0, 0, 0), kbar(0, 0, -12.68955, 0, 0, 0)],
    "force_z": [-5.361407, -5.420203, -5.427111], "z": [0.36858, 0.37280, 0.37360], "efermi": [None] * 3,
}


def check_mlff_steps(follower_or_frames, expected):
    frames = follower_or_frames
    assert [a.info["source"] for a in frames] == expected["source"]
    assert [a.info["ml_energy"] for a in frames] == pytest.approx(expected["ml"])
    assert [a.info["dft_energy"] for a in frames] == [None if e is None else pytest.approx(e) for e in expected["dft"]]
    for atoms, stress, force_z, z in zip(frames, expected["stress"], expected["force_z"], expected["z"]):
        assert np.allclose(atoms.get_stress(), stress, atol=1e-9)
        assert atoms.get_forces()[0, 2] == pytest.approx(force_z) and atoms.positions[0, 2] == pytest.approx(z)
        assert atoms.get_chemical_symbols() == ["H", "H"] and np.allclose(atoms.cell, np.eye(3) * 8.0)
        energy = atoms.info["dft_energy"] if atoms.info["source"] == "dft" else atoms.info["ml_energy"]
        assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(energy)


@pytest.mark.parametrize("name, expected", [("OUTCAR.ml_istart0", ISTART0), ("OUTCAR.ml_istart2", ISTART2)])
def test_read_outcar_of_mlff_runs(shared, name, expected):
    from vasp_interactive.outputs import read_outcar

    path = shared / "fixtures/vasp/mlff" / name
    with pytest.raises(Exception):  # noqa: B017 - the reason this reader exists: ASE cannot read these
        read(path, format="vasp-out", index=":")
    check_mlff_steps(read_outcar(path), expected)


@pytest.mark.parametrize("name, expected", [("OUTCAR.ml_istart0", ISTART0), ("OUTCAR.ml_istart2", ISTART2)])
def test_follower_counts_mlff_steps_in_any_letter_case(shared, tmp_path, name, expected):
    """6.4.1 changed the case of the ML energy lines: both spellings give the same steps."""
    from vasp_interactive.outputs import read_outcar

    text = (shared / "fixtures/vasp/mlff" / name).read_text()
    changed = "".join(line.swapcase() if "ML" in line else line for line in text.splitlines(keepends=True))
    assert "ml free energie of the ion-electron system" in changed and "ML FREE ENERGIE" not in changed
    for variant, content in (("as-written", text), ("case-changed", changed)):
        path = tmp_path / variant
        path.write_text(content)
        follower = OutcarFollower(path)
        assert follower.update() == len(expected["source"])
        assert [step.source for step in follower.steps] == expected["source"]
        for index, stress in enumerate(expected["stress"], start=1):
            assert np.allclose(follower.stress[index], stress, atol=1e-9)
        assert [follower.efermi.get(i) for i in range(1, len(expected["source"]) + 1)] == expected["efermi"]
        check_mlff_steps(read_outcar(path), expected)


def test_follower_sees_a_step_gain_its_dft_block(shared, tmp_path):
    """OUTCAR read while VASP writes it: after the ML block the step is ML; after the DFT block, DFT."""
    text = (shared / "fixtures/vasp/mlff/OUTCAR.ml_istart0").read_text()
    cut = text.index("--- Iteration      1(   1)")  # step 1's ML block written, its SCF not yet
    target = tmp_path / "OUTCAR"
    target.write_text(text[:cut])
    follower = OutcarFollower(target)
    assert follower.update() == 1 and follower.steps[0].source == "ml"
    assert np.allclose(follower.stress[1], 0.0)
    target.write_text(text)  # the same file grown (same inode): read from the old offset on
    assert follower.update() == 2
    assert [step.source for step in follower.steps] == ["dft", "dft"]
    assert np.allclose(follower.stress[1], ISTART0["stress"][0], atol=1e-9)
