"""The fake VASP's input readers: INCAR quirks, POSCAR forms, KPOINTS modes, fake POTCARs."""

from __future__ import annotations

import numpy as np
import pytest

from mock_vasp.errors import InputError
from mock_vasp.inputs.incar import Incar
from mock_vasp.inputs.kpoints import parse_kpoints
from mock_vasp.inputs.poscar import format_poscar, parse_poscar
from mock_vasp.inputs.potcar import fake_potcar_text, parse_potcar


def test_incar_quirks():
    incar = Incar.from_text(
        "SYSTEM = test run  # comment\n"
        "ISMEAR = 0; SIGMA = 0.05 ! two tags on one line\n"
        "lwave = .FALSE. ; LCHARG = F\n"
        "INTERACTIVE = T\n"
        "MAGMOM = 4*0.6 2*-1 1.5\n"
        "EDIFF = 1.0d-5\n"
        "   \n# only a comment\n"
    )
    assert incar.get_str("SYSTEM") == "test"
    assert incar.get_int("ISMEAR") == 0
    assert incar.get_float("SIGMA") == pytest.approx(0.05)
    assert incar.get_bool("LWAVE") is False and incar.get_bool("LCHARG") is False
    assert incar.get_bool("INTERACTIVE") is True
    assert incar.get_floats("MAGMOM") == [0.6] * 4 + [-1.0] * 2 + [1.5]
    assert incar.get_float("EDIFF") == pytest.approx(1e-5)
    assert incar.get_int("NSW", 7) == 7


@pytest.mark.parametrize("text, fragment", [
    ("ENCUT 400\n", "not of the form TAG = value"),
    ("ENCUT = \n", "has no value"),
    ("1ABC = 3\n", "not a valid tag"),
])
def test_incar_malformed_lines(text, fragment):
    with pytest.raises(InputError, match=fragment):
        Incar.from_text(text)


def test_incar_bad_types():
    incar = Incar.from_text("NSW = 2.5\nLWAVE = maybe\n")
    with pytest.raises(InputError, match="not an integer"):
        incar.get_int("NSW")
    with pytest.raises(InputError, match="not a logical"):
        incar.get_bool("LWAVE")


POSCAR_SELECTIVE = """Cu slab
 -47.25
 2.55 0.0 0.0
 0.0 2.55 0.0
 0.0 0.0 7.5
 Cu O
 1 1
Selective dynamics
Cartesian
 0.0 0.0 0.0 F F F
 1.0 1.0 2.0 T T T
"""


def test_poscar_negative_scale_cartesian_selective():
    structure = parse_poscar(POSCAR_SELECTIVE)
    assert structure.species == ["Cu", "O"] and structure.counts == [1, 1]
    assert abs(np.linalg.det(structure.lattice)) == pytest.approx(47.25)
    scale = (47.25 / (2.55 * 2.55 * 7.5)) ** (1 / 3)
    assert np.allclose(structure.cartesian[1], np.array([1.0, 1.0, 2.0]) * scale)
    assert structure.selective.tolist() == [[False] * 3, [True] * 3]
    again = parse_poscar(format_poscar(structure))
    assert np.allclose(again.frac, structure.frac) and np.allclose(again.lattice, structure.lattice)
    assert again.selective.tolist() == structure.selective.tolist()


def test_poscar_vasp4_takes_species_from_potcar():
    text = "x\n1.0\n3 0 0\n0 3 0\n0 0 3\n2\nDirect\n0 0 0\n0.5 0.5 0.5\n"
    assert parse_poscar(text, ["Al"]).symbols == ["Al", "Al"]
    with pytest.raises(InputError, match="VASP 4 format"):
        parse_poscar(text)


@pytest.mark.parametrize("text, fragment", [
    ("x\n1.0\n3 0 0\n0 3 0\n0 0 3\nAl\n2\nDirect\n0 0 0\n", "expected 2 position lines"),
    ("x\n1.0\n3 0 0\n0 3 0\n0 0 0\nAl\n1\nDirect\n0 0 0\n", "linearly dependent"),
    ("x\n1.0\n3 0 0\n0 3 0\n0 0 3\nAl O\n1\nDirect\n0 0 0\n", "2 species"),
    ("x\n1.0\n3 0 0\n0 3 0\n0 0 3\nAl\n1\nSpherical\n0 0 0\n", "Direct' or 'Cartesian"),
])
def test_poscar_errors(text, fragment):
    with pytest.raises(InputError, match=fragment):
        parse_poscar(text)


def test_kpoints_modes():
    reciprocal = np.array([1 / 4.0, 1 / 4.0, 1 / 20.0])
    gamma = parse_kpoints("k\n0\nGamma\n4 4 1\n", reciprocal)
    assert gamma.divisions == (4, 4, 1)
    assert gamma.weights.sum() == pytest.approx(1.0)
    assert len(gamma.weights) < 16  # k and -k folded by time reversal
    full = parse_kpoints("k\n0\nGamma\n4 4 1\n", reciprocal, time_reversal=False)
    assert len(full.weights) == 16
    mp = parse_kpoints("k\n0\nMonkhorst-Pack\n2 2 1\n0 0 0\n", reciprocal, time_reversal=False)
    assert np.allclose(np.sort(np.abs(mp.kpoints[:, 0])), 0.25)
    auto = parse_kpoints("k\n0\nAuto\n20\n", reciprocal)
    assert auto.divisions == (5, 5, 1)
    explicit = parse_kpoints("k\n2\nReciprocal\n0 0 0 1\n0.5 0 0 3\n", reciprocal)
    assert explicit.weights.tolist() == [0.25, 0.75]


@pytest.mark.slow
def test_fake_potcar_read_by_ase_and_pymatgen(tmp_path):
    from ase.calculators.vasp.create_input import read_potcar_numbers_of_electrons
    from pymatgen.io.vasp.inputs import PotcarSingle

    text = fake_potcar_text("Cu") + fake_potcar_text("O")
    path = tmp_path / "POTCAR"
    path.write_text(text)
    with open(path) as handle:
        assert read_potcar_numbers_of_electrons(handle) == [("Cu", 11.0), ("O", 6.0)]
    entries = parse_potcar(text)
    assert [(e.symbol, e.zval) for e in entries] == [("Cu", 11.0), ("O", 6.0)]
    with pytest.warns(UserWarning):  # pymatgen knows the data is not a real POTCAR
        single = PotcarSingle(fake_potcar_text("Cu"))
    assert single.zval == 11.0 and single.element == "Cu"
