"""VASP's interactive protocol, both directions, without I/O.

With ``INTERACTIVE = .TRUE.`` VASP computes a structure, prints its forces and energy on stdout,
then blocks reading the next structure from stdin. It speaks one of four dialects, told apart
by the prompt it prints and the marker that acknowledges the client's input:

* VASP <= 6.3: ``POSITIONS: reading from stdin``; the client sends fractional positions; VASP
  echoes the new and an old block of positions, then ``POSITIONS: read from stdin``;
* 6.3 with the public lattice patch: as above, then ``LATTICE: reading from stdin``; the client
  sends three lattice vectors; VASP echoes the New and Old lattices, then ``LATTICE: read from stdin``;
* >= 6.4.1 with ISIF < 3: ``POSITIONS: reading from stdin``; after the positions VASP prints the
  atom count, then ``POSITIONS: read from stdin``;
* >= 6.4.1 with ISIF >= 3: ``POSITIONS AND LATTICE: reading from stdin``; the client sends a POSCAR
  record; VASP prints ``POSITIONS AND LATTICE: read from stdin``.

* :mod:`.events`: the typed events (``Event``) and the prompt kinds;
* :mod:`.decoder`: stdout lines to events (``StreamParser``);
* :mod:`.encoder`: the answers written to stdin (``StructureReply``);
* :mod:`.capability`: whether this VASP can take a new cell (``LatticeCapability``);
* :mod:`.stop`: the clean stop with STOPCAR (``StopExchange``).
"""

from .capability import LatticeCapability, update_capability
from .decoder import Phase, StreamParser, fixed_point_row, fortran_float, is_scf_line, lattice_echo_mismatch
from .encoder import StructureReply, format_lattice, format_poscar_record, format_positions
from .events import (
    ACCEPTED,
    ErrorMessage,
    Event,
    HardStop,
    InputAccepted,
    LatticeEcho,
    Prompt,
    PromptKind,
    ProtocolVariant,
    StepResult,
    StepStarted,
    Variant,
)
from .stop import STOPCAR_TEXT, GiveUp, Send, StopAction, StopExchange

__all__ = [
    "ACCEPTED",
    "STOPCAR_TEXT",
    "ErrorMessage",
    "Event",
    "GiveUp",
    "HardStop",
    "InputAccepted",
    "LatticeCapability",
    "LatticeEcho",
    "Phase",
    "Prompt",
    "PromptKind",
    "ProtocolVariant",
    "Send",
    "StepResult",
    "StepStarted",
    "StopAction",
    "StopExchange",
    "StreamParser",
    "StructureReply",
    "Variant",
    "fixed_point_row",
    "fortran_float",
    "is_scf_line",
    "format_lattice",
    "format_poscar_record",
    "format_positions",
    "lattice_echo_mismatch",
    "update_capability",
]
