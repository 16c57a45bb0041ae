"""The fake's interactive mode, line by line: every protocol variant, STOPCAR, NSW exhaustion."""

from __future__ import annotations

import re

import numpy as np
import pytest
from ase.io import read
from conftest import MOCK_VASP
from helpers import RawVasp, co_on_cu, write_inputs

INTERACTIVE = dict(interactive=True, ibrion=-1, potim=0.0, nsw=50, isym=0)
FORCE_ROW = re.compile(r"^(\s+-?\d+\.\d{7}){3}$")


def start(tmp_path, version="6.4.2", isif=2, **extra):
    atoms = co_on_cu()
    params = dict(INTERACTIVE, isif=isif)
    params.update(extra)
    write_inputs(tmp_path, atoms, settings={"version": version}, **params)
    raw = RawVasp([MOCK_VASP], tmp_path)
    first = raw.until_prompt()
    return raw, read(tmp_path / "POSCAR"), first


def step_block(lines):
    """(SCF count, forces rows) of the last ionic step in lines."""
    start = max(i for i, line in enumerate(lines) if line == "FORCES:")
    forces = lines[start + 1: start + 1 + 14]
    scf = [line for line in lines if line.startswith(("DAV:", "RMM:"))]
    return scf, forces


@pytest.mark.slow
@pytest.mark.parametrize("version, echo", [("5.4.4", True), ("6.1.2", True), ("6.3.2", True), ("6.4.2", False)])
def test_positions_variants(tmp_path, version, echo):
    raw, poscar, first = start(tmp_path, version)
    try:
        assert any(f"vasp.{version}" in line for line in first[:6])
        scf, forces = step_block(first)
        assert len(scf) >= 5 and all(FORCE_ROW.match(row) for row in forces)
        assert first[-2].split()[1] == "F=" and first[-1] == "POSITIONS: reading from stdin"
        frac = poscar.get_scaled_positions()
        frac[-1, 2] += 0.003
        raw.send_frac(frac)
        reply = raw.until_prompt()
        marker = reply.index("POSITIONS: read from stdin")
        if echo:  # N new then N old positions, 3F14.7, before the marker
            check_positions_echo(reply, frac, poscar.get_scaled_positions())
        else:  # 6.4.1+: one line with the number of atoms, no echo
            assert marker == 1 and reply[0].split() == [str(len(frac))]
        assert reply[marker + 1] == " bond charge predicted"
        assert reply[-1] == "POSITIONS: reading from stdin"
        second_scf = [line for line in reply if line.startswith("DAV:")]
        assert 1 <= len(second_scf) < len(scf)  # extrapolated start beats the cold start
        if echo:  # real 6.1.2: the "old" block is the POSCAR's positions at every exchange, not the last sent
            frac[0, 0] += 0.002
            raw.send_frac(frac)
            check_positions_echo(raw.until_prompt(), frac, poscar.get_scaled_positions())
    finally:
        raw.process.kill()
        raw.finish()


def check_positions_echo(reply, sent, poscar_frac):
    marker = reply.index("POSITIONS: read from stdin")
    n = len(sent)
    assert marker == 2 * n
    new = np.array([[float(v) for v in line.split()] for line in reply[:n]])
    old = np.array([[float(v) for v in line.split()] for line in reply[n:marker]])
    wrapped = (old - poscar_frac + 0.5) % 1.0 - 0.5
    assert np.allclose(new, sent, atol=1e-6) and np.abs(wrapped).max() < 1e-6


def expected_lattice_echo(new, old) -> list[str]:
    """The lattice patch's echo as documented for real VASP: header, 3 rows of 3X,3F13.7,3X,3F13.7, empty line."""
    lines = []
    for label, cell in (("New", new), ("Old", old)):
        lines.append(f"{label}   direct lattice vectors                   reciprocal lattice vectors")
        reciprocal = np.linalg.inv(cell).T
        for k in range(3):
            lines.append("   " + "".join(f"{x:13.7f}" for x in cell[k]) + "   "
                         + "".join(f"{x:13.7f}" for x in reciprocal[k]))
        lines.append("")
    return lines


@pytest.mark.slow
def test_lattice_patch_variant(tmp_path):
    raw, poscar, _ = start(tmp_path, "6.3.2+lattice")
    try:
        previous = np.array(poscar.cell)
        for scale in (1.01, 1.02):  # the second exchange's "Old" block is the first one's new lattice
            frac = poscar.get_scaled_positions()
            raw.send_frac(frac)
            reply = raw.until_prompt()
            assert reply[-1] == "LATTICE: reading from stdin"
            assert reply[2 * len(frac)] == "POSITIONS: read from stdin"
            cell = np.array(poscar.cell) * scale
            raw.send("".join(f"{a:.12f} {b:.12f} {c:.12f}\n" for a, b, c in cell))
            reply = raw.until_prompt()
            marker = reply.index("LATTICE: read from stdin")
            assert reply[:marker] == expected_lattice_echo(cell, previous)  # byte for byte
            # what the public driver counts: 9 non-empty lines up to and including the marker
            assert sum(1 for line in reply[:marker + 1] if line.strip()) == 9
            assert reply[-1] == "POSITIONS: reading from stdin"
            outcar = read(tmp_path / "OUTCAR", format="vasp-out", index=-1)
            assert np.allclose(outcar.cell, cell, atol=1e-6)
            previous = cell
    finally:
        raw.process.kill()
        raw.finish()


@pytest.mark.slow
def test_poscar_record_variant(tmp_path):
    raw, poscar, first = start(tmp_path, "6.4.2", isif=3)
    try:
        assert first[-1] == "POSITIONS AND LATTICE: reading from stdin"
        cell = np.array(poscar.cell) * 0.99
        species = "Cu O C"
        record = ("title\n1.0\n" + "".join(f"{a} {b} {c}\n" for a, b, c in cell) + f"{species}\n12 1 1\nDirect\n"
                  + "".join(f"{x} {y} {z}\n" for x, y, z in poscar.get_scaled_positions()))
        raw.send(record)
        reply = raw.until_prompt()
        assert reply[0] == "POSITIONS AND LATTICE: read from stdin"
        assert reply[-1] == "POSITIONS AND LATTICE: reading from stdin"
        assert np.allclose(read(tmp_path / "OUTCAR", format="vasp-out", index=-1).cell, cell)
        raw.send(record.replace("12 1 1", "11 2 1"))  # counts that do not match the POSCAR
        reply = raw.read_until(lambda line: False)
        assert reply[-1] == "<EOF>"
        assert raw.finish() != 0
        assert "POSCAR record on stdin" in raw.stderr
    finally:
        raw.finish()


@pytest.mark.slow
def test_stopcar_labort_sequence(tmp_path):
    raw, poscar, first = start(tmp_path, "6.1.2")
    frac = poscar.get_scaled_positions()
    (tmp_path / "STOPCAR").write_text("LABORT = .TRUE.\n")
    raw.send_frac(frac)
    reply = raw.until_prompt()
    marker = reply.index("POSITIONS: read from stdin")
    after = reply[marker + 1:]
    scf = [line for line in after if line.startswith("DAV:")]
    assert len(scf) == 1  # exactly one electronic step
    hard = after.index(" hard stop encountered!  aborting job ...")
    assert after[hard - 1].startswith("DAV:   1") and after[hard + 1] == "FORCES:"
    assert after[hard + 2 + 14].split()[1] == "F=" and after[-1] == "POSITIONS: reading from stdin"
    raw.send_frac(frac)
    tail = raw.read_until(lambda line: False)
    marker = tail.index("POSITIONS: read from stdin")
    assert marker == 2 * len(frac)
    assert tail[marker + 1:] == [" writing wavefunctions", " deleting file STOPCAR", "<EOF>"]
    assert raw.finish() == 0
    assert not (tmp_path / "STOPCAR").exists() and (tmp_path / "WAVECAR").exists()


@pytest.mark.slow
def test_stopcar_lstop_finishes_the_step(tmp_path):
    raw, poscar, _ = start(tmp_path, "6.1.2")
    frac = poscar.get_scaled_positions()
    frac[-1, 2] += 0.01
    (tmp_path / "STOPCAR").write_text("LSTOP = .TRUE.\n")
    raw.send_frac(frac)
    reply = raw.until_prompt()
    scf = [line for line in reply if line.startswith("DAV:")]
    assert len(scf) >= 2 and " soft stop encountered!  aborting job ..." in reply
    raw.send_frac(frac)
    tail = raw.read_until(lambda line: False)
    assert tail[-3:] == [" writing wavefunctions", " deleting file STOPCAR", "<EOF>"]
    assert raw.finish() == 0


@pytest.mark.slow
def test_nsw_exhaustion_ends_after_the_last_result(tmp_path):
    raw, poscar, _ = start(tmp_path, "6.4.2", nsw=3)
    frac = poscar.get_scaled_positions()
    for _ in range(2):
        frac[-1, 2] += 0.002
        raw.send_frac(frac)
        reply = raw.until_prompt()
    assert reply[-1] == "<EOF>"
    assert reply[-3].split()[:2] == ["3", "F="] and reply[-2] == " writing wavefunctions"
    assert raw.finish() == 0
    assert len(read(tmp_path / "OUTCAR", format="vasp-out", index=":")) == 3
    assert len(read(tmp_path / "vasprun.xml", format="vasp-xml", index=":")) == 3
    import warnings

    from pymatgen.io.vasp import Oszicar, Outcar, Vasprun

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vasprun = Vasprun(tmp_path / "vasprun.xml")
        outcar = Outcar(tmp_path / "OUTCAR")
        oszicar = Oszicar(tmp_path / "OSZICAR")
    energies = [float(line.split()[2]) for line in raw.lines if " F= " in line]
    assert [step["e_fr_energy"] for step in vasprun.ionic_steps] == pytest.approx(energies, abs=1e-6)
    assert outcar.final_fr_energy == pytest.approx(energies[-1], abs=1e-6)
    assert len(oszicar.ionic_steps) == 3


@pytest.mark.slow
def test_spin_polarised_energy_line(tmp_path):
    raw, _, first = start(tmp_path, "6.4.2", ispin=2, magmom=[1.0] * 14)
    try:
        line = next(line for line in first if " F= " in line)
        assert re.search(r"mag=\s+\d+\.\d{4}$", line)
    finally:
        raw.process.kill()
        raw.finish()


@pytest.mark.slow
def test_eof_on_stdin_is_a_fortran_error(tmp_path):
    raw, _, _ = start(tmp_path, "6.4.2")
    raw.process.stdin.close()
    assert raw.finish() == 24
    assert "end-of-file during read" in raw.stderr


@pytest.mark.slow
def test_rms_c_column_as_real_vasp_prints_it(tmp_path):
    """Real 6.1.2: rms(c) from the 5th SCF line of the first step (NELMDL = -5), never on a step's last line."""
    raw, poscar, first = start(tmp_path, "6.1.2")
    try:
        def columns(lines):
            return [len(line.split()) for line in lines if line.startswith(("DAV:", "RMM:"))]

        cold = columns(first)
        assert len(cold) > 6
        assert cold[:4] == [7] * 4 and cold[4:-1] == [8] * (len(cold) - 5) and cold[-1] == 7
        frac = poscar.get_scaled_positions()
        frac[-1, 2] += 0.003
        raw.send_frac(frac)
        warm = columns(raw.until_prompt())
        assert len(warm) >= 2 and warm[:-1] == [8] * (len(warm) - 1) and warm[-1] == 7
        oszicar = [line for line in (tmp_path / "OSZICAR").read_text().splitlines() if line.startswith("DAV:")]
        assert [len(line.split()) for line in oszicar[:len(cold)]] == cold  # OSZICAR prints the same lines
    finally:
        raw.process.kill()
        raw.finish()
