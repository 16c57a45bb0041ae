"""Whether this VASP can take a new cell without a restart: one answer, learnt from the events.

* A ``LATTICE`` prompt (6.3 with the lattice patch) or a ``POSITIONS AND LATTICE`` prompt
  (>= 6.4.1 with ISIF >= 3) means it streams a cell.
* A structure whose computation starts right after its positions were accepted, with no
  ``LATTICE`` prompt in between, means it cannot (VASP <= 6.3 unpatched, or >= 6.4.1 with ISIF < 3).
* Before either, a ``POSITIONS`` prompt leaves it unknown: the first cell change sent probes it.
"""

from __future__ import annotations

from enum import Enum

from .events import Event, Prompt, PromptKind, StepStarted


class LatticeCapability(str, Enum):
    UNKNOWN = "unknown"
    STREAMS = "streams"
    CANNOT = "cannot"


def update_capability(capability: LatticeCapability, event: Event) -> LatticeCapability:
    """The capability after ``event``; the latest evidence wins."""
    if isinstance(event, Prompt) and event.kind is not PromptKind.POSITIONS:
        return LatticeCapability.STREAMS
    if isinstance(event, StepStarted) and event.after is PromptKind.POSITIONS:
        return LatticeCapability.CANNOT
    return capability
