"""The stdout decoder (a pure state machine), on real VASP stdout and on every variant."""

from __future__ import annotations

import numpy as np
import pytest

from vasp_interactive.errors import EigensolverError, VaspProtocolError, ZbrentError
from vasp_interactive.protocol import (
    ErrorMessage,
    HardStop,
    InputAccepted,
    LatticeEcho,
    Prompt,
    PromptKind,
    StepResult,
    StepStarted,
    StreamParser,
    Variant,
    fixed_point_row,
    fortran_float,
    is_scf_line,
)

# Real VASP 5.4.4 stdout (fixture vasp544_truncated/step-1/vasp.out, H2): the version line, then
# both ionic steps and the one exchange between them, byte for byte.
VASP544_STDOUT = """\
 vasp.5.4.4.18Apr17-6-g9f103f2a35 (build Feb  2 2022 14:43:48) complex          \x20
 POSCAR found type information on POSCAR  H\x20
 POSCAR found :  1 types and       2 ions
 entering main loop
       N       E                     dE             d eps       ncg     rms          rms(c)
DAV:   1    -0.502267845488E+01   -0.50227E+01   -0.18693E+02    16   0.604E+01
DAV:   2    -0.652919482653E+01   -0.15065E+01   -0.15065E+01    16   0.154E+01
DAV:   3    -0.654902865977E+01   -0.19834E-01   -0.19834E-01    16   0.222E+00
DAV:   4    -0.654919250119E+01   -0.16384E-03   -0.16384E-03    32   0.184E-01
DAV:   5    -0.654919250431E+01   -0.31206E-08   -0.31242E-08    16   0.858E-04    0.308E+00
DAV:   6    -0.634977889849E+01    0.19941E+00   -0.97334E-02    16   0.826E-01    0.175E+00
DAV:   7    -0.622758699034E+01    0.12219E+00   -0.26367E-01    16   0.139E+00    0.220E-01
DAV:   8    -0.623005830690E+01   -0.24713E-02   -0.37406E-03    16   0.176E-01    0.163E-01
DAV:   9    -0.622887987591E+01    0.11784E-02   -0.19409E-03    16   0.110E-01    0.370E-02
DAV:  10    -0.623138419115E+01   -0.25043E-02   -0.82515E-04    16   0.743E-02    0.222E-02
DAV:  11    -0.623155500876E+01   -0.17082E-03   -0.85539E-06    16   0.149E-02    0.119E-02
DAV:  12    -0.623231955462E+01   -0.76455E-03   -0.12974E-04    16   0.312E-02    0.468E-03
DAV:  13    -0.623239278125E+01   -0.73227E-04   -0.76258E-06    16   0.674E-03
FORCES:
    -3.6669864     0.0000000     0.0000009
     3.6669864    -0.0000000    -0.0000009
   1 F= -.62323928E+01 E0= -.62323928E+01  d E =-.623239E+01
POSITIONS: reading from stdin
     0.1200000     0.0000000     0.0000000
     0.0000000     0.0000000     0.0000000
     0.1196875     0.0000000     0.0000000
     0.0000000     0.0000000     0.0000000
POSITIONS: read from stdin
 bond charge predicted
       N       E                     dE             d eps       ncg     rms          rms(c)
DAV:   1    -0.622323279170E+01    0.90868E-02   -0.20098E-03    16   0.198E-01    0.147E-02
DAV:   2    -0.622323163836E+01    0.11533E-05   -0.18815E-05    16   0.177E-02
FORCES:
    -3.6854838    -0.0000000     0.0000010
     3.6854838     0.0000000    -0.0000010
   2 F= -.62232316E+01 E0= -.62232316E+01  d E =-.622323E+01
POSITIONS: reading from stdin
"""


def feed_all(parser: StreamParser, lines, answer=True) -> list[object]:
    """Feed lines; after each prompt pretend the client answered (as a driver would)."""
    events: list[object] = []
    for line in lines:
        new = parser.feed(line)
        events.extend(new)
        if answer and any(isinstance(e, Prompt) for e in new):
            parser.expect_input_sent()
    return events


def check_vasp544_two_steps(lines: list[str]) -> None:
    parser = StreamParser(natoms=2)
    events = feed_all(parser, lines)
    results = [e for e in events if isinstance(e, StepResult)]
    assert parser.version == "5.4.4.18Apr17-6-g9f103f2a35"
    assert [r.step for r in results] == [1, 2]
    assert [r.scf_iterations for r in results] == [13, 2]
    assert results[0].free_energy == pytest.approx(-6.2323928) and results[1].free_energy == pytest.approx(-6.2232316)
    assert np.allclose(results[0].forces, [[-3.6669864, 0.0, 0.0000009], [3.6669864, -0.0, -0.0000009]])
    assert np.allclose(results[1].forces[:, 0], [-3.6854838, 3.6854838])
    assert sum(isinstance(e, Prompt) for e in events) == 2
    assert sum(isinstance(e, InputAccepted) for e in events) == 1
    assert [e for e in events if isinstance(e, StepStarted)] == [StepStarted(None), StepStarted(PromptKind.POSITIONS)]
    assert parser.variant is Variant.CLASSIC


def test_vasp544_two_steps_inline():
    check_vasp544_two_steps(VASP544_STDOUT.splitlines())


def test_vasp544_fixture_two_steps(shared):
    """The inline excerpt is the fixture's bytes: the whole file decodes the same."""
    lines = (shared / "fixtures/vasp/vasp544_truncated/step-1/vasp.out").read_text().splitlines()
    excerpt = VASP544_STDOUT.splitlines()
    start = excerpt.index(" entering main loop")
    assert excerpt[start:] == lines[start - len(excerpt):] and set(excerpt[:start]) <= set(lines)
    check_vasp544_two_steps(lines)


def test_vasp612_transcript_with_driver_chatter(shared):
    """Real 6.1.2 stdout interleaved with the Python driver's own log lines and echoes."""
    text = (shared / "fixtures/vasp/stdout/vasp612_interactive_online_learning.txt").read_text().splitlines()
    parser = StreamParser(natoms=7)
    events = feed_all(parser, text)
    results = [e for e in events if isinstance(e, StepResult)]
    assert parser.version == "6.1.2"
    assert [r.step for r in results] == [1, 2, 3, 4, 5, 6, 7]
    assert results[-1].scf_iterations == 1  # the hard-stop step has one electronic step
    assert results[-1].free_energy == pytest.approx(-15.976606) and results[-1].energy_sigma0 == pytest.approx(
        -15.957799)
    assert any(isinstance(e, HardStop) for e in events)
    assert results[0].scf_iterations > 2 * np.mean([r.scf_iterations for r in results[1:-1]])


def lines_of_step(step=1, natoms=2, mag=None):
    block = ["DAV:   1    -0.502267845488E+01   -0.50227E+01   -0.18693E+02    16   0.604E+01",
             "DAV:   2    -0.652919482653E+01   -0.15065E+01   -0.15065E+01    16   0.154E+01",
             "FORCES:"] + ["     0.1000000    -0.2000000     0.3000000"] * natoms
    energy = f"   {step} F= -.65291948E+01 E0= -.65291900E+01  d E =-.652919E+01"
    if mag is not None:
        energy += f"  mag=     {mag:.4f}"
    return block + [energy]


def test_all_prompt_variants():
    header = [" vasp.6.4.2 20Jul23 (build x) complex"]
    # >= 6.4.1 with ISIF < 3: a count line, no echo
    parser = StreamParser(2)
    events = feed_all(parser, header + lines_of_step() + ["POSITIONS: reading from stdin", "           2",
                                                             "POSITIONS: read from stdin"] + lines_of_step(2))
    assert [e.step for e in events if isinstance(e, StepResult)] == [1, 2]
    assert parser.variant is Variant.CLASSIC
    # >= 6.4.1 with ISIF >= 3: POSCAR record
    parser = StreamParser(2)
    feed_all(parser, header + lines_of_step() + ["POSITIONS AND LATTICE: reading from stdin"])
    assert parser.variant is Variant.POSCAR_RECORD
    # 6.3 with the lattice patch: a LATTICE prompt after the positions
    parser = StreamParser(2)
    events = feed_all(parser, [" vasp.6.3.2 27Jun22"] + lines_of_step() + [
        "POSITIONS: reading from stdin", "     0.1 0.0 0.0", "     0.0 0.0 0.0", "     0.1 0.0 0.0",
        "     0.0 0.0 0.0", "POSITIONS: read from stdin", "LATTICE: reading from stdin"]
        + section_3_1_echo(np.eye(3) * 8.1, np.eye(3) * 8.0) + ["LATTICE: read from stdin"] + lines_of_step(2))
    assert parser.variant is Variant.LATTICE_PATCH
    assert [e.kind for e in events if isinstance(e, Prompt)] == [PromptKind.POSITIONS, PromptKind.LATTICE]
    assert sum(isinstance(e, StepResult) for e in events) == 2
    echo = [e for e in events if isinstance(e, LatticeEcho)]
    assert len(echo) == 1 and np.allclose(echo[0].new, np.eye(3) * 8.1) and np.allclose(echo[0].old, np.eye(3) * 8)
    assert np.allclose(echo[0].new_reciprocal, np.eye(3) / 8.1, atol=1e-7)


def section_3_1_echo(new, old) -> list[str]:
    """The lattice patch's echo, written out independently of the decoder: per lattice (New, then Old)
    a header, three rows of 3X,3F13.7,3X,3F13.7 (direct, reciprocal without 2 pi), an empty line."""
    lines = []
    for label, cell in (("New", new), ("Old", old)):
        lines.append(label + "   direct lattice vectors" + " " * 19 + "reciprocal lattice vectors")
        for direct, reciprocal in zip(cell, np.linalg.inv(cell).T):
            row = "".join(f"{x:13.7f}" for x in direct), "".join(f"{x:13.7f}" for x in reciprocal)
            lines.append("   " + row[0] + "   " + row[1])
        lines.append("")
    return lines


def lattice_exchange(echo: list[str]) -> list[object]:
    parser = StreamParser(1)
    return feed_all(parser, [" vasp.6.3.2 27Jun22"] + lines_of_step(natoms=1) + [
        "POSITIONS: reading from stdin", "     0.1 0.0 0.0", "     0.0 0.0 0.0", "POSITIONS: read from stdin",
        "LATTICE: reading from stdin"] + echo + ["LATTICE: read from stdin"])


def test_lattice_echo_accepts_the_patch_layout_and_nothing_looser():
    cell = np.array([[10.2, 0.0, 0.0], [-5.1, 8.83345, 0.0], [0.0, 0.0, 24.5]])
    good = section_3_1_echo(cell, cell * 0.99)
    echo = [e for e in lattice_exchange(good) if isinstance(e, LatticeEcho)][0]
    assert np.allclose(echo.new, cell, atol=1e-7) and np.allclose(echo.old, cell * 0.99, atol=1e-7)
    # numbers that touch (F13.7 of -1234.5678901 fills all 13 columns) are read by column
    wide = section_3_1_echo(np.diag([-1234.5678901, 9.0, 9.0]), np.eye(3) * 9.0)
    assert "   -1234.5678901" in wide[1]
    echo = [e for e in lattice_exchange(wide) if isinstance(e, LatticeEcho)][0]
    assert echo.new[0, 0] == pytest.approx(-1234.5678901)
    # the layout our fake used to print, and near misses of the real one, are protocol errors
    old_fake = [" New" + "".join(f"{x:14.7f}" for x in cell[0]) + "".join(f"{x:14.7f}" for x in cell[0] / 100)]
    variants = {
        "old fake layout": old_fake + ["    " + "".join(f"{x:14.7f}" for x in row) * 2 for row in cell[1:]] * 2,
        "no empty lines": [line for line in good if line],
        "Old before New": good[5:] + good[:5],
        "a row short": good[:3] + good[4:],
        "F14.7 rows": [line.replace("   ", "    ", 1) if line.startswith("   ") else line for line in good],
        "stray line": good[:5] + [" WARNING: something"] + good[5:],
    }
    for name, lines in variants.items():
        with pytest.raises(VaspProtocolError, match="lattice patch's layout"):
            lattice_exchange(lines)
            pytest.fail(f"accepted a lattice echo with {name}")


def test_the_classic_hang_prompt_is_recognised():
    """The public driver waited for 'POSITIONS: reading from stdin' and hung on 6.4's prompt."""
    parser = StreamParser(2)
    events = feed_all(parser, lines_of_step() + ["POSITIONS AND LATTICE: reading from stdin"], answer=False)
    assert isinstance(events[-1], Prompt) and events[-1].kind is PromptKind.POSITIONS_AND_LATTICE


def test_unknown_prompt_and_garbage_are_errors():
    parser = StreamParser(2)
    with pytest.raises(VaspProtocolError, match="unknown prompt"):
        feed_all(parser, lines_of_step() + ["CELL AND MAGMOMS: reading from stdin"])
    parser = StreamParser(3)
    with pytest.raises(VaspProtocolError, match="malformed line 2 of 3"):
        feed_all(parser, ["FORCES:", "  0.1 0.2 0.3", "#@!& 0xDEADBEEF"])
    parser = StreamParser(1)
    with pytest.raises(VaspProtocolError, match="malformed line 1"):
        feed_all(parser, ["FORCES:", "  ************    0.0000000     0.0000000"])
    parser = StreamParser(1)
    with pytest.raises(VaspProtocolError, match="without a FORCES block"):
        feed_all(parser, ["   1 F= -.65291948E+01 E0= -.65291900E+01  d E =-.652919E+01"])
    parser = StreamParser(2)
    with pytest.raises(VaspProtocolError, match="before VASP delivered"):
        feed_all(parser, ["DAV:   1    -0.5E+01   -0.5E+01   -0.1E+02    16   0.6E+01",
                          "POSITIONS: reading from stdin"])


def test_spin_polarised_line_and_fortran_numbers():
    parser = StreamParser(2)
    events = feed_all(parser, lines_of_step(mag=1.2345))
    result = [e for e in events if isinstance(e, StepResult)][0]
    assert result.magnetization == pytest.approx(1.2345)
    assert fortran_float("-.62323928E+01") == pytest.approx(-6.2323928)
    assert all(is_scf_line(line) for line in lines_of_step()[:2])
    assert is_scf_line("CG:   3    -0.65291948E+01   -0.1E-03   -0.2E-03    32   0.1E-01")
    assert not is_scf_line(lines_of_step()[-1]) and not is_scf_line("FORCES:")
    assert fortran_float("0.1D-02") == pytest.approx(1e-3)
    assert fortran_float("0.5-100") == pytest.approx(0.5e-100)
    with pytest.raises(ValueError):
        fortran_float("**********")


def test_forces_that_fill_their_whole_field_are_read():
    """At forces of 10^5-10^6 eV/A (two atoms almost on top of each other), VASP's 3F14.7 leaves no
    blank between fields; the row is still unambiguous and must be read, not called garbage."""
    assert fixed_point_row("762318.6875001204096.875000", (6, 6)) == [762318.6875, 1204096.875]
    assert fixed_point_row("  -1.23456-12.34567  0.00000", (5, 5, 5)) == [-1.23456, -12.34567, 0.0]
    with pytest.raises(ValueError):
        fixed_point_row("762318.68750001204096.87500", (6, 6))  # the decimals do not fit the format
    for unprintable in ("  NaN  0.0  0.0", "**************     0.0000000     0.0000000",
                        "     0.0000000****************************"):
        with pytest.raises(ValueError):
            fixed_point_row(unprintable, (7, 7, 7))
        assert np.isnan(fixed_point_row(unprintable, (7, 7, 7), unprintable_as_nan=True)).sum() >= 1
    assert fixed_point_row("     0.1000000****************************", (7, 7, 7), unprintable_as_nan=True)[0] == 0.1
    # NaN and infinities as Fortran prints them, also beside a field that fills its width
    beside = "762318.6875001204096.875000     -Infinity"
    with pytest.raises(ValueError):
        fixed_point_row(beside, (6, 6, 6))
    read = fixed_point_row(beside, (6, 6, 6), unprintable_as_nan=True)
    assert read[:2] == [762318.6875, 1204096.875] and np.isnan(read[2])
    parser = StreamParser(2)
    touching = [f"{762318.6875:14.7f}{-12345.1234567:14.7f}{0.5:14.7f}", "     0.1000000    -0.2000000     0.3000000"]
    assert touching[0].startswith("762318.6875000-12345.1234567")  # no blank between them
    lines = lines_of_step()
    lines[3:5] = touching
    result = [e for e in feed_all(parser, lines) if isinstance(e, StepResult)][0]
    assert result.forces[0] == pytest.approx([762318.6875, -12345.1234567, 0.5])
    assert result.forces[1] == pytest.approx([0.1, -0.2, 0.3])


def test_known_failures_are_classified():
    parser = StreamParser(2)
    events = feed_all(parser, [" ZBRENT: fatal error in bracketing",
                               " Error EDDDAV: Call to ZHEGV failed. Returncode =   7"])
    kinds = [e.error for e in events if isinstance(e, ErrorMessage)]
    assert kinds == [ZbrentError, EigensolverError]
    assert all(isinstance(e, ErrorMessage) for e in events)
    scf = feed_all(StreamParser(1), ["DAV:   3    -0.6E+01   -0.1E-02   -0.1E-02    16   0.1E-01    0.2E-01"])
    assert scf == [StepStarted(None)]
