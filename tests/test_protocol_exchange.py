"""The client's side of the protocol, without a process: encoder bytes, the STOPCAR exchange, the lattice
capability learnt from the events, and the stdout line reader's EOF and timeout types."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from vasp_interactive.protocol import (
    STOPCAR_TEXT,
    GiveUp,
    HardStop,
    InputAccepted,
    LatticeCapability,
    LatticeEcho,
    Prompt,
    PromptKind,
    Send,
    StepResult,
    StepStarted,
    StopExchange,
    StreamParser,
    StructureReply,
    format_lattice,
    format_poscar_record,
    format_positions,
    lattice_echo_mismatch,
    update_capability,
)
from vasp_interactive.stream import EOF, LineStream, Timeout

FRAC = np.array([[0.12, 0.0, 0.0], [0.0, 0.5, -0.25]])
CELL = np.array([[8.0, 0.0, 0.0], [0.0, 8.5, 0.0], [-1.0, 0.0, 9.0]])
REPLY = StructureReply(FRAC, CELL, ("Cu", "H"), (1, 1))

# Real VASP 6.1.2 stdout (fixture stdout/vasp612_interactive_online_learning.txt, Cu7): step 6's forces
# and energy, its prompt, the driver's own log lines and its echo of the positions, VASP's echo of the new and
# old positions, the hard-stop step 7 (one electronic step) and the clean exit. Byte for byte.
VASP612_STOP = """\
FORCES:
    -0.0071265    -0.0077180    -0.0126961
    -0.0032100    -0.0017678    -0.0013848
    -0.0067754     0.0020119    -0.0045409
    -0.0195880     0.0017233     0.0042107
     0.0073643     0.0304343     0.0216403
     0.0271221     0.0041718     0.0024972
     0.0022135    -0.0288556    -0.0097265
   6 F= -.15976602E+02 E0= -.15957796E+02  d E =-.159766E+02
POSITIONS: reading from stdin
Time to call parent (call #7): 3.855602741241455
uncertainty: 0.0036040434328480243, tolerance: 0.08
BFGS:   37 08:23:02      -15.957796        0.0381
Attemping to close VASP cleanly
Inputting positions...
 0.4982113093032915  0.4850199324818690  0.4130009791919472
 0.4952698051047481  0.4909004915482272  0.5832953467838056
 0.6272425319667655  0.5304761163383567  0.4989009749775703
 0.4969682799823892  0.6251111801987064  0.4934304339353888
 0.3664125014908958  0.5302118639354585  0.4942616501182339
 0.4157687634339418  0.3768704321729869  0.5006377726161960
 0.5770538354122903  0.3772848659865856  0.5037121445128059
     0.4982113     0.4850199     0.4130010
     0.4952698     0.4909005     0.5832953
     0.6272425     0.5304761     0.4989010
     0.4969683     0.6251112     0.4934304
     0.3664125     0.5302119     0.4942617
     0.4157688     0.3768704     0.5006378
     0.5770538     0.3772849     0.5037121
     0.4972408     0.4912573     0.4178509
     0.5040829     0.4906181     0.5821491
     0.6446220     0.5428375     0.4954917
     0.4975465     0.6364673     0.4955166
     0.3553780     0.5249661     0.4871220
     0.4035544     0.3661959     0.5007165
     0.5745023     0.3635327     0.5083925
POSITIONS: read from stdin
 bond charge predicted
       N       E                     dE             d eps       ncg     rms          rms(c)
DAV:   1    -0.159766056565E+02   -0.41766E-05   -0.37698E-05    64   0.123E-01    0.181E-02
 hard stop encountered!  aborting job ...
FORCES:
    -0.0140726    -0.0126398    -0.0092966
    -0.0301008    -0.0036370     0.0071684
    -0.0089868    -0.0282942     0.0144520
    -0.0156405    -0.0264317    -0.0247240
     0.0045209     0.0503829     0.0414577
     0.0384131     0.0086224    -0.0064007
     0.0258667     0.0119974    -0.0226569
   7 F= -.15976606E+02 E0= -.15957799E+02  d E =-.159766E+02
POSITIONS: reading from stdin
Inputting positions...
 0.4982113093032915  0.4850199324818690  0.4130009791919472
 0.4952698051047481  0.4909004915482272  0.5832953467838056
 0.6272425319667655  0.5304761163383567  0.4989009749775703
 0.4969682799823892  0.6251111801987064  0.4934304339353888
 0.3664125014908958  0.5302118639354585  0.4942616501182339
 0.4157687634339418  0.3768704321729869  0.5006377726161960
 0.5770538354122903  0.3772848659865856  0.5037121445128059
     0.4982113     0.4850199     0.4130010
     0.4952698     0.4909005     0.5832953
     0.6272425     0.5304761     0.4989010
     0.4969683     0.6251112     0.4934304
     0.3664125     0.5302119     0.4942617
     0.4157688     0.3768704     0.5006378
     0.5770538     0.3772849     0.5037121
     0.4972408     0.4912573     0.4178509
     0.5040829     0.4906181     0.5821491
     0.6446220     0.5428375     0.4954917
     0.4975465     0.6364673     0.4955166
     0.3553780     0.5249661     0.4871220
     0.4035544     0.3661959     0.5007165
     0.5745023     0.3635327     0.5083925
POSITIONS: read from stdin
 writing wavefunctions
 deleting file STOPCAR
"""


def feed(parser: StreamParser, text: str) -> list:
    events = []
    for line in text.splitlines():
        events.extend(parser.feed(line))
    return events


# --- encoder: exact bytes -----------------------------------------------------------------------
def test_positions_and_lattice_bytes():
    assert format_positions(FRAC) == ("  0.1200000000000000  0.0000000000000000  0.0000000000000000\n"
                                      "  0.0000000000000000  0.5000000000000000 -0.2500000000000000\n")
    assert format_lattice(CELL) == ("    8.00000000000000    0.00000000000000    0.00000000000000\n"
                                    "    0.00000000000000    8.50000000000000    0.00000000000000\n"
                                    "   -1.00000000000000    0.00000000000000    9.00000000000000\n")
    awkward = np.array([[1 / 3, 2 / 3, 0.999999999999]])
    assert np.abs(np.loadtxt(format_positions(awkward).splitlines(), ndmin=2) - awkward).max() < 1e-15


def test_poscar_record_bytes_and_what_a_poscar_reader_makes_of_them():
    from io import StringIO

    from ase.io import read

    record = format_poscar_record(FRAC, CELL, ("Cu", "H"), (1, 1))
    assert record == "vasp_interactive\n1.0\n" + format_lattice(CELL) + "Cu H\n1 1\nDirect\n" + format_positions(FRAC)
    atoms = read(StringIO(record), format="vasp")
    assert atoms.get_chemical_symbols() == ["Cu", "H"]
    assert np.allclose(atoms.cell, CELL, atol=1e-13) and np.allclose(atoms.get_scaled_positions(wrap=False), FRAC)


def test_each_prompt_gets_its_answer():
    assert REPLY.to(PromptKind.POSITIONS) == format_positions(FRAC)
    assert REPLY.to(PromptKind.LATTICE) == format_lattice(CELL)
    assert REPLY.to(PromptKind.POSITIONS_AND_LATTICE) == format_poscar_record(FRAC, CELL, ("Cu", "H"), (1, 1))


def test_lattice_echo_mismatch():
    rounded = np.round(CELL, 7)  # what F13.7 can echo
    assert lattice_echo_mismatch(LatticeEcho(rounded, rounded, rounded), CELL + 4e-8) is None
    wrong = rounded.copy()
    wrong[2, 0] = -1.001
    message = lattice_echo_mismatch(LatticeEcho(wrong, rounded, rounded), CELL)
    assert message is not None and "echoed a lattice other than the one sent" in message and "-1.001" in message


# --- the STOPCAR exchange -----------------------------------------------------------------------
def run_stop(parser: StreamParser, prompt: PromptKind, stdout: str, reply=REPLY) -> tuple[list, list]:
    """Drive ``StopExchange`` over ``stdout`` as the session does; the texts sent and the events."""
    exchange = StopExchange(reply)
    sent = [exchange.begin(prompt).text]
    parser.expect_input_sent()
    events = []
    for line in stdout.splitlines():
        for event in parser.feed(line):
            events.append(event)
            action = exchange.on_event(event)
            if isinstance(action, GiveUp):
                sent.append(action)
                return sent, events
            if isinstance(action, Send):
                parser.expect_input_sent()
                sent.append(action.text)
    return sent, events


def test_stop_exchange_on_real_612_bytes():
    assert STOPCAR_TEXT == "LABORT = .TRUE.\n"
    reply = StructureReply(np.full((7, 3), 0.5), np.eye(3) * 15.0, ("Cu",), (7,))
    parser = StreamParser(natoms=7)
    prompt_at = VASP612_STOP.index("POSITIONS: reading from stdin\n") + len("POSITIONS: reading from stdin\n")
    before = feed(parser, VASP612_STOP[:prompt_at])
    assert [type(e) for e in before] == [StepStarted, StepResult, Prompt] and before[1].step == 6
    sent, events = run_stop(parser, PromptKind.POSITIONS, VASP612_STOP[prompt_at:], reply)
    assert sent == [format_positions(reply.frac)] * 2  # the hard-stop step, then the answer VASP exits on
    results = [e for e in events if isinstance(e, StepResult)]
    assert [(r.step, r.scf_iterations) for r in results] == [(7, 1)]
    assert results[0].free_energy == pytest.approx(-15.976606)
    assert any(isinstance(e, HardStop) for e in events)
    assert [e.kind for e in events if isinstance(e, InputAccepted)] == [PromptKind.POSITIONS] * 2


def step_lines(step: int, natoms: int = 2) -> str:
    return ("DAV:   1    -0.652919482653E+01   -0.15065E+01   -0.15065E+01    16   0.154E+01\n"
            + " hard stop encountered!  aborting job ...\nFORCES:\n"
            + "     0.1000000    -0.2000000     0.3000000\n" * natoms
            + f"   {step} F= -.65291948E+01 E0= -.65291900E+01  d E =-.652919E+01\n")


def primed(prompt: str) -> StreamParser:
    """A parser that has read one step and ``prompt``, as VASP waits when the STOPCAR is written."""
    parser = StreamParser(natoms=2)
    feed(parser, step_lines(1).replace(" hard stop encountered!  aborting job ...\n", "") + prompt + "\n")
    return parser


def patch_echo() -> str:
    rows = ["   " + "".join(f"{x:13.7f}" for x in row) + "   " + "".join(f"{x:13.7f}" for x in inv)
            for row, inv in zip(CELL, np.linalg.inv(CELL).T)]
    block = "{}   direct lattice vectors                   reciprocal lattice vectors\n" + "\n".join(rows) + "\n\n"
    return block.format("New") + block.format("Old")


def test_stop_exchange_answers_the_lattice_patch_twice():
    exchange = ("POSITIONS: read from stdin\nLATTICE: reading from stdin\n" + patch_echo()
                + "LATTICE: read from stdin\n")
    stdout = exchange + step_lines(2) + "POSITIONS: reading from stdin\n" + exchange + " writing wavefunctions\n"
    sent, _ = run_stop(primed("POSITIONS: reading from stdin"), PromptKind.POSITIONS, stdout)
    assert sent == [format_positions(FRAC), format_lattice(CELL)] * 2


def test_stop_exchange_with_poscar_records():
    stdout = ("POSITIONS AND LATTICE: read from stdin\n" + step_lines(2)
              + "POSITIONS AND LATTICE: reading from stdin\nPOSITIONS AND LATTICE: read from stdin\n")
    sent, _ = run_stop(primed("POSITIONS AND LATTICE: reading from stdin"), PromptKind.POSITIONS_AND_LATTICE,
                       stdout)
    assert sent == [REPLY.to(PromptKind.POSITIONS_AND_LATTICE)] * 2


def test_stop_exchange_gives_up_on_a_vasp_that_keeps_going():
    stdout = ("POSITIONS: read from stdin\n" + step_lines(2) + "POSITIONS: reading from stdin\n"
              + "POSITIONS: read from stdin\n" + step_lines(3) + "POSITIONS: reading from stdin\n")
    sent, _ = run_stop(primed("POSITIONS: reading from stdin"), PromptKind.POSITIONS, stdout)
    assert sent[:2] == [format_positions(FRAC)] * 2
    assert isinstance(sent[2], GiveUp) and "after the hard stop" in sent[2].why
    early = StopExchange(REPLY)
    assert isinstance(early.on_event(Prompt(PromptKind.POSITIONS)), GiveUp)  # a prompt before any result
    assert early.on_event(HardStop()) is None


# --- the lattice capability ---------------------------------------------------------------------
def capability_after(events, start=LatticeCapability.UNKNOWN) -> list[LatticeCapability]:
    seen, capability = [], start
    for event in events:
        capability = update_capability(capability, event)
        seen.append(capability)
    return seen


def test_capability_from_real_544_bytes():
    from test_protocol import VASP544_STDOUT, feed_all

    events = feed_all(StreamParser(natoms=2), VASP544_STDOUT.splitlines())
    seen = capability_after(events)
    first_exchange = next(i for i, e in enumerate(events) if isinstance(e, StepStarted) and e.after is not None)
    assert set(seen[:first_exchange]) == {LatticeCapability.UNKNOWN}  # a POSITIONS prompt alone says nothing
    assert set(seen[first_exchange:]) == {LatticeCapability.CANNOT}  # positions computed with no LATTICE prompt


def test_capability_of_each_variant_and_latest_evidence_wins():
    streams, cannot, unknown = LatticeCapability.STREAMS, LatticeCapability.CANNOT, LatticeCapability.UNKNOWN
    patch = [Prompt(PromptKind.POSITIONS), InputAccepted(PromptKind.POSITIONS), Prompt(PromptKind.LATTICE),
             InputAccepted(PromptKind.LATTICE), StepStarted(PromptKind.LATTICE)]
    assert capability_after(patch) == [unknown, unknown, streams, streams, streams]
    record = [Prompt(PromptKind.POSITIONS_AND_LATTICE), StepStarted(PromptKind.POSITIONS_AND_LATTICE)]
    assert capability_after(record) == [streams, streams]
    assert capability_after([StepStarted(PromptKind.POSITIONS)], start=streams) == [cannot]
    assert capability_after([Prompt(PromptKind.LATTICE)], start=cannot) == [streams]
    for start in LatticeCapability:
        neutral = [StepStarted(None), Prompt(PromptKind.POSITIONS), InputAccepted(PromptKind.POSITIONS), HardStop()]
        assert capability_after(neutral, start=start) == [start] * len(neutral)


# --- the line reader's EOF and timeouts ----------------------------------------------------------
@pytest.fixture
def pipes():
    """A ``LineStream`` reading two pipes, and the write ends of its stdout and stderr."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    readers = os.fdopen(out_r, "rb", buffering=0), os.fdopen(err_r, "rb", buffering=0)
    yield LineStream(*readers, None, 10, 1024), out_w, err_w
    for reader in readers:
        reader.close()


def test_line_stream_eof_is_a_type_and_stays(pipes):
    stream, out_w, err_w = pipes
    os.write(out_w, b"one\ntwo\npartial")
    os.close(out_w)
    os.close(err_w)
    got = [stream.next_line(time.monotonic() + 5, None) for _ in range(5)]
    assert got[:3] == ["one\n", "two\n", "partial"]
    assert all(isinstance(item, EOF) for item in got[3:])
    stream.join(2.0)
    assert stream.finished and stream.recent() == "one\ntwo\npartial"


def test_line_stream_deadline_and_silence_timeouts(pipes):
    stream, out_w, err_w = pipes
    try:
        deadline = stream.next_line(time.monotonic() + 0.05, None)
        assert isinstance(deadline, Timeout) and deadline.kind == "deadline"
        stream.last_activity = time.monotonic()
        silence = stream.next_line(None, 0.05)
        assert isinstance(silence, Timeout) and silence.kind == "silence" and silence.waited >= 0.05
        os.write(out_w, b"late\n")
        assert stream.next_line(time.monotonic() + 5, 5.0) == "late\n"
    finally:
        os.close(out_w)
        os.close(err_w)
        stream.join(2.0)
