"""Pure pieces of the fake VASP: the POTCAR library, STOPCAR, the backend registry, faults, VASP's
fixed texts, and the package's import graph (no cycle)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mock_vasp
from mock_vasp.config import EmulatedVersion, Faults
from mock_vasp.errors import BackendError
from mock_vasp.inputs.potcar import COMPLETE_MARKER, fake_potcar_library, parse_potcar
from mock_vasp.inputs.stopcar import parse_stopcar, read_stopcar
from mock_vasp.mpi import Comm
from mock_vasp.physics.registry import make_backend
from mock_vasp.physics.scf import ScfParams
from mock_vasp.run.faults import NOISE_LINE, FaultInjector
from mock_vasp.run.messages import error_box, preamble


def test_fake_potcar_library_is_written_once_and_completed_after_a_cut(tmp_path):
    root = fake_potcar_library(tmp_path)
    cu = root / "potpaw_PBE" / "Cu" / "POTCAR"
    assert root == tmp_path and parse_potcar(cu.read_text())[0].zval == 11.0
    assert (root / "potpaw_PBE" / "Zr_sv" / "POTCAR").is_file()
    cu.write_text("edited")
    fake_potcar_library(tmp_path)
    assert cu.read_text() == "edited"  # a complete library is reused as it is
    (root / "potpaw_PBE" / COMPLETE_MARKER).unlink()  # as after a crash while writing
    fake_potcar_library(tmp_path)
    assert parse_potcar(cu.read_text())[0].symbol == "Cu"
    assert not list(root.rglob(".POTCAR.*"))  # no staged files left behind
    lda = fake_potcar_library(tmp_path, "LDA")
    assert "PAW_LDA Cu" in (lda / "potpaw" / "Cu" / "POTCAR").read_text()


@pytest.mark.parametrize("text, expected", [
    ("LABORT = .TRUE.\n", "LABORT"),
    ("LSTOP = T\n", "LSTOP"),
    ("LSTOP = .TRUE. ; LABORT = .TRUE.\n", "LABORT"),
    ("LSTOP = .FALSE.\n", None),
    ("this is not a tag\n", None),
])
def test_stopcar(text, expected, tmp_path):
    assert parse_stopcar(text) == expected
    assert read_stopcar(tmp_path) is None
    (tmp_path / "STOPCAR").write_text(text)
    assert read_stopcar(tmp_path) == expected


def test_backend_registry():
    emt = make_backend(" EMT ")
    assert emt.name == "emt" and not emt.native_scf and "Cu" in emt.elements
    with pytest.raises(BackendError, match="cannot treat element.*Zr"):
        emt.check_elements(["Cu", "Zr"])
    result = emt.compute(["Cu", "Cu"], np.array([[0, 0, 0], [1.8, 1.8, 0.0]]), 3.6 * np.eye(3), True)
    assert result.forces.shape == (2, 3) and result.stress is not None
    built = make_backend("ase:ase.calculators.lj.LennardJones", {"sigma": 2.0})
    assert built.elements is None and built.calculator.parameters["sigma"] == 2.0
    for spec, fragment in [("lj", "unknown backend"), ("ase:EMT", "full path"),
                           ("ase:ase.calculators.nothere.X", "cannot be imported"),
                           ("ase:ase.atoms.Atoms", "could not be built")]:
        with pytest.raises(BackendError, match=fragment):
            make_backend(spec, {"no_such_option": 1})


@pytest.mark.slow
def test_optional_backends_are_imported_only_when_named():
    code = ("import sys; from mock_vasp.physics.registry import make_backend; make_backend('emt'); "
            "print(sorted(m for m in sys.modules if m.startswith('mock_vasp.physics')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "gpaw_backend" not in loaded and "registry" in loaded


def _injector(**switches) -> FaultInjector:
    return FaultInjector(Faults(**switches), 0.0, Comm(), sys.stdout, lambda: None)


def test_faults_garble_the_forces_block_only_at_their_step():
    forces = np.arange(12.0).reshape(4, 3)
    clean = _injector().forces_block(2, forces)
    assert clean.splitlines() == [f"{a:14.7f}{b:14.7f}{c:14.7f}" for a, b, c in forces]
    noisy = _injector(garbage_at_step=2, garbage="noise")
    assert noisy.forces_block(1, forces) == clean
    lines = noisy.forces_block(2, forces).splitlines()
    assert lines[2] == NOISE_LINE and len(lines) == 5
    overflow = _injector(garbage_at_step=1, garbage="overflow").forces_block(1, forces).splitlines()
    assert overflow[0].startswith("  ************") and overflow[1:] == clean.splitlines()[1:]


def test_faults_kick_the_density_from_their_step_on():
    injector = _injector(no_convergence_from_step=3)
    assert injector.scf_params(2, ScfParams()).noise == 0.0
    assert injector.scf_params(3, ScfParams()).noise > 0 and injector.scf_params(7, ScfParams()).noise > 0


def test_error_box_and_preamble():
    box = error_box("No INCAR found: VASP needs an INCAR in the working directory " + "x" * 100)
    rows = box.splitlines()
    assert len({len(row) for row in rows if row.startswith("|")}) == 1  # every row closes at column 79
    assert "I REFUSE TO CONTINUE WITH THIS SICK JOB" in box
    assert preamble(EmulatedVersion.parse("6.4.2"), 2)[0].startswith(" vasp.6.4.2")  # 6.3+: version first
    old = preamble(EmulatedVersion.parse("5.4.4"), 2)
    assert old[0] == " running on    2 total cores" and old[-1].startswith(" vasp.5.4.4")


def _imports(path: Path, package: str, modules: set[str]) -> set[str]:
    """The mock_vasp modules ``path`` imports, anywhere in the file (also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found |= {node.value.partition(":")[0]} & modules  # import paths held as strings
    return found


def test_mock_vasp_has_no_import_cycle():
    root = Path(mock_vasp.__file__).parent
    names = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        names[path] = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    modules = set(names.values())
    graph = {}
    for path, name in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = _imports(path, package, modules) - {name}
    assert "mock_vasp.physics.gpaw_backend" in graph["mock_vasp.physics.registry"]
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, f"import cycle: {' -> '.join(trail[trail.index(name):] + (name,))}"
        if name in done:
            return
        for target in graph.get(name, ()):
            visit(target, (*trail, name))
        done.add(name)

    for name in graph:
        visit(name, ())
    assert max(len(path.read_text().splitlines()) for path in names) <= 400


def test_fixed_width_numbers_overflow_where_fortran_would():
    """Python's %14.7f widens a number that does not fit; Fortran prints asterisks, and a minus sign
    takes a digit's place. The fake prints what VASP would, and the driver's reader reads it back."""
    from mock_vasp.fortran import vector_block
    from mock_vasp.outputs.outcar import _force_table
    from vasp_interactive.protocol import fixed_point_row

    rows = vector_block([[-99999.9999999, 999999.9999999, 0.5], [-100000.0, 0.0, 0.0]]).splitlines()
    assert rows == ["-99999.9999999999999.9999999     0.5000000", "**************     0.0000000     0.0000000"]
    assert fixed_point_row(rows[0], (7, 7, 7)) == pytest.approx([-99999.9999999, 999999.9999999, 0.5])
    with pytest.raises(ValueError):
        fixed_point_row(rows[1], (7, 7, 7))
    table = _force_table(" POSITION    TOTAL-FORCE (eV/Angst)", np.array([[0.9575, 0.0, 0.0], [1.0, 2.0, 3.0]]),
                         np.array([[-215960.5, 762318.6875, 1204096.875], [-1e6, 2e7, 1.0]])).splitlines()
    assert table[4].endswith("-215960.500000 762318.6875001204096.875000")
    assert table[5].endswith("****************************      1.000000")
    assert fixed_point_row(table[4], (5, 5, 5, 6, 6, 6)) == pytest.approx(
        [0.9575, 0.0, 0.0, -215960.5, 762318.6875, 1204096.875])
    assert np.isnan(fixed_point_row(table[5], (5, 5, 5, 6, 6, 6), unprintable_as_nan=True)[3:5]).all()
    # a NaN or an infinity is not an overflow: Fortran prints NaN / Infinity / Inf, right-justified
    from mock_vasp.fortran import fortran_e, fortran_f

    assert vector_block([[np.nan, -np.inf, np.inf]]) == "           NaN     -Infinity      Infinity\n"
    assert fortran_e(np.nan, 14, 8) == "           NaN" and fortran_f(-np.inf, 8, 3) == "    -Inf"
    assert fortran_f(np.nan, 2, 1) == "**"  # too narrow even for NaN
    table = _force_table(" POSITION    TOTAL-FORCE (eV/Angst)", np.array([[1.0, 2.0, 3.0]]),
                         np.array([[762318.6875, 1204096.875, np.nan]])).splitlines()
    assert table[4].endswith("762318.6875001204096.875000           NaN")
    read = fixed_point_row(table[4], (5, 5, 5, 6, 6, 6), unprintable_as_nan=True)
    assert read[:5] == pytest.approx([1.0, 2.0, 3.0, 762318.6875, 1204096.875]) and np.isnan(read[5])
