"""The client's side of a clean stop with STOPCAR, as a pure exchange (no I/O).

With ``LABORT = .TRUE.`` in STOPCAR, VASP stops after the current electronic step. Seen on VASP
6.1.2: the client writes STOPCAR and answers the waiting prompt with a structure; VASP does one
electronic step, prints ``hard stop encountered!  aborting job ...``, the forces, the ``F=`` line
and a prompt; the client answers once more; VASP prints ``read from stdin``, writes WAVECAR,
deletes STOPCAR and exits 0. A VASP that prompts again after that does not stop this way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .encoder import StructureReply
from .events import Event, Prompt, PromptKind, StepResult

STOPCAR_TEXT = "LABORT = .TRUE.\n"


@dataclass(frozen=True)
class Send:
    """Write ``text`` to VASP's stdin (an answer to the prompt just seen)."""

    text: str


@dataclass(frozen=True)
class GiveUp:
    """VASP does not stop on the STOPCAR: stop it with signals."""

    why: str


StopAction = Send | GiveUp | None


class _StopPhase(Enum):
    LAST_STEP = "last step"  # the structure sent, the hard-stop step's result expected
    RESULT = "result"  # the result read, its prompt expected
    FINAL = "final"  # the final answer sent, VASP should exit


class StopExchange:
    """What to do at each event while VASP stops on a STOPCAR; ``reply`` answers its prompts."""

    def __init__(self, reply: StructureReply):
        self.reply = reply
        self._phase = _StopPhase.LAST_STEP

    def begin(self, prompt: PromptKind) -> Send:
        """The answer to the prompt VASP waits at when the STOPCAR is written."""
        return Send(self.reply.to(prompt))

    def on_event(self, event: Event) -> StopAction:
        """The action ``event`` calls for; None: keep reading (until VASP's stdout ends)."""
        if isinstance(event, StepResult) and self._phase is _StopPhase.LAST_STEP:
            self._phase = _StopPhase.RESULT
            return None
        if not isinstance(event, Prompt):
            return None
        if event.kind is PromptKind.LATTICE:
            return Send(self.reply.to(event.kind))
        if self._phase is _StopPhase.RESULT:
            self._phase = _StopPhase.FINAL
            return Send(self.reply.to(event.kind))
        if self._phase is _StopPhase.LAST_STEP:
            return GiveUp("VASP asked for input before it finished the hard-stop step")
        return GiveUp("VASP asked for another structure after the hard stop")
