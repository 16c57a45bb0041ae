"""``mock-vasp --replay``: play a recorded VASP stdout, one ionic step per structure received.

The transcript is cut after every prompt (``... reading from stdin``). The first piece is printed
at once; each later piece is printed after the client has sent what the prompt asks for, so a
driver can be tested on real bytes. When the transcript runs out the program exits with code 0,
as a VASP that has nothing more to say.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import MockVaspError
from ..interactive import StdinReader

PROMPTS = (
    "POSITIONS AND LATTICE: reading from stdin",
    "LATTICE: reading from stdin",
    "POSITIONS: reading from stdin",
)


def _prompt_of(line: str) -> str | None:
    stripped = line.strip()
    return next((p for p in PROMPTS if stripped == p), None)


def _atom_count(lines: list[str]) -> int:
    for start, line in enumerate(lines):
        if line.strip() == "FORCES:":
            count = 0
            for following in lines[start + 1:]:
                if "F=" in following:
                    return count
                count += 1
    raise MockVaspError("replay: the transcript has no FORCES: block to count the atoms from")


def split_transcript(lines: list[str]) -> list[tuple[list[str], str | None]]:
    pieces: list[tuple[list[str], str | None]] = []
    current: list[str] = []
    for line in lines:
        current.append(line)
        prompt = _prompt_of(line)
        if prompt is not None:
            pieces.append((current, prompt))
            current = []
    if current:
        pieces.append((current, None))
    return pieces


def replay(path: Path, stdin=None, out=None) -> int:
    out = out or sys.stdout
    try:
        lines = Path(path).read_text(errors="replace").splitlines(keepends=True)
    except OSError as error:
        sys.stderr.write(f"mock-vasp --replay: cannot read {path}: {error}\n")
        return 2
    natoms = _atom_count(lines)
    reader = StdinReader(stdin)
    try:
        for text, prompt in split_transcript(lines):
            out.write("".join(text))
            out.flush()
            if prompt == "POSITIONS: reading from stdin":
                reader.floats(3 * natoms)
            elif prompt == "LATTICE: reading from stdin":
                reader.floats(9)
            elif prompt is not None:
                reader.line(skip_blank=False)
                reader.floats(10)
                reader.line()
                reader.line()
                reader.line()
                reader.floats(3 * natoms)
    except MockVaspError as error:
        sys.stderr.write(str(error) + "\n")
        return getattr(error, "exit_code", 1)
    sys.stderr.write("mock-vasp --replay: transcript exhausted\n")
    return 0
