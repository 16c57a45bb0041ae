"""One running VASP: launch, exchange structures over stdin/stdout, pause, stop.

The session joins three pieces: ``VaspProcess`` (launching, signals, reaping), ``LineStream``
(draining the pipes with deadlines) and the pure ``protocol`` package (``StreamParser`` decodes
stdout, ``StructureReply`` answers the prompts, ``StopExchange`` leads the STOPCAR stop,
``update_capability`` learns whether a cell can be streamed). It knows nothing about ASE; the
calculator sits on top of it.
"""

from __future__ import annotations

import contextlib
import signal
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from .errors import (
    SilenceTimeout,
    StartupTimeout,
    StepTimeout,
    VaspError,
    VaspExited,
    VaspKilled,
    VaspProtocolError,
)
from .outcar import ComputedBy
from .process import Pauser, PauseReport, VaspProcess, signal_death
from .protocol import (
    STOPCAR_TEXT,
    ErrorMessage,
    Event,
    GiveUp,
    HardStop,
    LatticeCapability,
    LatticeEcho,
    Phase,
    Prompt,
    PromptKind,
    ProtocolVariant,
    Send,
    StepResult,
    StepStarted,
    StopExchange,
    StreamParser,
    StructureReply,
    lattice_echo_mismatch,
    update_capability,
)
from .settings import InteractiveSettings
from .stream import EOF, LineStream, Timeout


@dataclass(frozen=True)
class IonicStepRecord:
    """Bookkeeping of one ionic step: SCF cost, time spent waiting for VASP, and who computed it.

    ``source``: ``"ml"`` for a step VASP's machine-learned force field answered without an SCF
    loop (stdout shows no electronic steps), else ``"dft"``. ``ml_energy``: the force field's free
    energy for the structure, where OUTCAR had it when the step was recorded; ``dft_energy``: the
    DFT free energy where DFT ran.
    """

    index: int
    scf_iterations: int
    seconds_in_vasp: float
    free_energy: float
    source: ComputedBy = "dft"
    ml_energy: float | None = None
    dft_energy: float | None = None


StepRecord = IonicStepRecord  # the earlier name


@dataclass(frozen=True)
class CellNotStreamed:
    """The new cell was not sent: this VASP took the positions and asked for no lattice.

    VASP was stopped before it finished the step on the old cell; the caller restarts it.
    """


class VaspSession:
    """A VASP process in interactive mode. All structures are in VASP's atom order."""

    def __init__(self, argv: Sequence[str], directory: Path, species: Sequence[str], counts: Sequence[int],
                 settings: InteractiveSettings, txt: IO[str] | None = None,
                 env: dict[str, str] | None = None, stop_with_signal: bool = False,
                 lattice_capability: LatticeCapability = LatticeCapability.UNKNOWN):
        self.directory = Path(directory)
        self.species = list(species)
        self.counts = list(counts)
        # whether this VASP takes a new cell: what the caller knew, then what its events say
        self.lattice_capability = lattice_capability
        self.settings = settings
        self.parser = StreamParser(int(sum(counts)))
        self.process = VaspProcess(argv, self.directory, env)
        self.stream: LineStream | None = None
        self._txt = txt
        self.stop_with_signal = stop_with_signal
        self.records: list[IonicStepRecord] = []
        self.messages: list[ErrorMessage] = []
        self.hard_stop_seen = False
        self.exhausted = False  # VASP ended normally after its last allowed step
        self.ended: VaspError | None = None  # VASP ended abnormally after delivering a result
        self.closed = False
        self.pauser = Pauser(self.process, settings.pause)
        self._reply: StructureReply | None = None  # the structure VASP computes or computed last

    # ------------------------------------------------------------------ state
    @property
    def version(self) -> str | None:
        return self.parser.version

    @property
    def variant(self) -> ProtocolVariant:
        return self.parser.variant

    @property
    def awaiting_input(self) -> bool:
        return self.parser.phase is Phase.PROMPTED and self.process.alive

    @property
    def usable(self) -> bool:
        return not self.closed and self.awaiting_input

    # ------------------------------------------------------------------ running
    def start(self, frac: np.ndarray, lattice: np.ndarray) -> StepResult:
        """Launch VASP on the input files already written and return its first result."""
        self._reply = self._structure(frac, lattice)
        stale = self.directory / "STOPCAR"
        if stale.exists():  # left by a run that was killed: VASP would stop at its first SCF step
            warnings.warn(f"removed a stale {stale} before starting VASP", stacklevel=3)
            stale.unlink()
        self.process.start()
        popen = self.process.popen
        self.stream = LineStream(popen.stdout, popen.stderr, self._txt, self.settings.stdout_tail_lines,
                                 self.settings.stderr_tail_bytes)
        timeouts = self.settings.timeouts
        deadline = None if timeouts.startup is None else time.monotonic() + timeouts.startup
        started = time.monotonic()
        result = self._read_result(deadline, "start-up")
        assert isinstance(result, StepResult)  # no cell was sent
        self._after_result(result, deadline, started)
        return result

    def submit(self, frac: np.ndarray, lattice: np.ndarray,
               cell_changed: bool = False) -> StepResult | CellNotStreamed:
        """Send a structure (and the lattice where the protocol carries it); return its result.

        With ``cell_changed`` and a VASP that turns out not to read a lattice, VASP is stopped
        and ``CellNotStreamed`` returned: the caller restarts it on the new cell.
        """
        if self.paused:
            self.resume()
        if not self.awaiting_input:
            raise VaspProtocolError("VASP is not waiting for a structure (it ended or is mid-step)")
        timeouts = self.settings.timeouts
        deadline = None if timeouts.step is None else time.monotonic() + timeouts.step
        started = time.monotonic()
        self._reply = self._structure(frac, lattice)
        self._answer(self._reply.to(self.parser.prompt))
        result = self._read_result(deadline, "ionic step", cell_changed=cell_changed)
        if isinstance(result, StepResult):
            self._after_result(result, deadline, started)
        return result

    def _structure(self, frac: np.ndarray, lattice: np.ndarray) -> StructureReply:
        return StructureReply(frac.copy(), lattice.copy(), tuple(self.species), tuple(self.counts))

    def _answer(self, text: str) -> None:
        """Write the answer to the prompt VASP waits at."""
        self.parser.expect_input_sent()
        self.stream.last_activity = time.monotonic()
        try:
            self.process.write(text)
        except (BrokenPipeError, OSError):
            pass  # VASP is gone; reading will report how it ended

    def _read_result(self, deadline: float | None, what: str,
                     cell_changed: bool = False) -> StepResult | CellNotStreamed:
        while True:
            for event in self._next_events(deadline, what):
                if isinstance(event, StepResult):
                    return event
                if isinstance(event, StepStarted):
                    if cell_changed and self.lattice_capability is LatticeCapability.CANNOT:
                        self.terminate()  # it would compute the new positions in the old cell
                        return CellNotStreamed()
                elif isinstance(event, LatticeEcho):
                    mismatch = lattice_echo_mismatch(event, self._reply.lattice)
                    if mismatch is not None:
                        raise self._protocol_failure(mismatch)
                elif isinstance(event, Prompt):
                    if event.kind is not PromptKind.LATTICE:
                        raise self._protocol_failure(f"VASP asked for input during the {what} before giving a result")
                    self._answer(self._reply.to(event.kind))

    def _after_result(self, result: StepResult, deadline: float | None, started: float) -> None:
        """Wait for the next prompt; or notice that VASP ended (NSW spent, or a crash)."""
        while True:
            try:
                events = self._next_events(deadline, "end of the ionic step", eof_ok=True)
            except VaspError as error:
                self.ended = error
                break
            if events is None:  # EOF: VASP ended after delivering this result
                code = self.process.reap(self.settings.timeouts.terminate)
                if code == 0:
                    self.exhausted = True
                else:
                    self.ended = self._exit_failure(code, "after the last result")
                self._shutdown_stream()
                break
            if any(isinstance(e, Prompt) for e in events):
                break
        dft = result.scf_iterations > 0
        self.records.append(IonicStepRecord(len(self.records) + 1, result.scf_iterations,
                                            time.monotonic() - started, result.free_energy,
                                            source="dft" if dft else "ml",
                                            dft_energy=result.free_energy if dft else None))

    def _next_events(self, deadline: float | None, what: str, eof_ok: bool = False) -> list[Event] | None:
        """Events of the next stdout line; raises on EOF (unless eof_ok: None), timeouts and garbage."""
        assert self.stream is not None
        while True:
            item = self.stream.next_line(deadline, self.settings.timeouts.silence)
            if isinstance(item, EOF):
                if eof_ok:
                    return None
                code = self.process.reap(self.settings.timeouts.terminate)
                self._shutdown_stream()
                if self.process.killed_when_reaped and not self.messages:
                    raise VaspExited(
                        f"VASP's stdout closed during the {what} while VASP kept running, so it was stopped. "
                        "The usual cause is a redirect in the command or in a wrapper script (e.g. "
                        "'exec vasp_std > out.txt'): VaspInteractive must read VASP's stdout; use txt= for a copy",
                        exit_code=code, **self._context())
                raise self._exit_failure(code, f"during the {what}")
            if isinstance(item, Timeout):
                raise self._timeout_failure(item, what)
            try:
                events = self.parser.feed(item)
            except VaspProtocolError as error:
                raise self._protocol_failure(error.summary) from None
            for event in events:
                self.lattice_capability = update_capability(self.lattice_capability, event)
                if isinstance(event, ErrorMessage):
                    self.messages.append(event)
                elif isinstance(event, HardStop):
                    self.hard_stop_seen = True
            if events:
                return events

    # ------------------------------------------------------------------ failures
    def _context(self) -> dict:
        return {
            "stdout_tail": self.stream.recent() if self.stream else "",
            "stderr_tail": self.stream.stderr.text() if self.stream else "",
            "directory": str(self.directory),
        }

    def _exit_failure(self, code: int | None, when: str) -> VaspError:
        context = self._context()
        if self.messages:
            known = self.messages[-1]
            return known.error(f"VASP stopped {when}: {known.message} (hint: {known.hint})",
                               exit_code=code, vasp_message=known.message, **context)
        death = signal_death(self.process.argv, code)
        if death is not None:
            return VaspKilled(f"VASP was killed by {death.describe()} {when}", exit_code=code, **context)
        return VaspExited(f"VASP exited {when} without a result", exit_code=code, **context)

    def _timeout_failure(self, timeout: Timeout, what: str) -> VaspError:
        context = self._context()
        self.terminate()
        t = self.settings.timeouts
        if timeout.kind == "silence":
            return SilenceTimeout(
                f"VASP printed nothing for {timeout.waited:.1f} s during the {what} (silence timeout "
                f"{t.silence} s); it was stopped. A hang, or buffered output (try 'srun -u')",
                exit_code=self.process.returncode, **context)
        if what == "start-up":
            return StartupTimeout(f"no first result within {t.startup} s; VASP was stopped",
                                  exit_code=self.process.returncode, **context)
        return StepTimeout(f"the {what} took longer than {t.step} s; VASP was stopped",
                           exit_code=self.process.returncode, **context)

    def _protocol_failure(self, summary: str) -> VaspError:
        context = self._context()
        self.terminate()
        return VaspProtocolError(summary + "; VASP was stopped", exit_code=self.process.returncode, **context)

    # ------------------------------------------------------------------ pausing
    @property
    def paused(self) -> bool:
        return self.pauser.paused

    def pause(self) -> PauseReport:
        """Stop VASP's ranks (they use no CPU until ``resume``); VASP must be waiting for input."""
        if not self.pauser.paused and not self.awaiting_input:
            return PauseReport.refused("VASP is not waiting at a prompt")
        return self.pauser.pause()

    def resume(self) -> PauseReport:
        """Let VASP's ranks run again; the silence timeout counts from now."""
        report = self.pauser.resume()
        if self.stream is not None:
            self.stream.last_activity = time.monotonic()
        return report

    # ------------------------------------------------------------------ stopping
    def close(self) -> int | None:
        """Stop VASP cleanly if it waits for input (STOPCAR), else with signals. Idempotent."""
        if self.closed:
            return self.process.returncode
        self.closed = True
        if self.process.popen is None:
            return None
        if self.paused:
            self.resume()
        if self.process.alive and self.awaiting_input:
            if self.stop_with_signal:
                self._stop_with_sigint()
            else:
                self._stop_with_stopcar()
        return self.terminate()

    def _stop_with_stopcar(self) -> None:
        """Write STOPCAR and lead VASP through its last step (``StopExchange``) to a clean exit."""
        stopcar = self.directory / "STOPCAR"
        try:
            stopcar.write_text(STOPCAR_TEXT)
            deadline = time.monotonic() + self.settings.timeouts.stop
            exchange = StopExchange(self._reply)
            self._answer(exchange.begin(self.parser.prompt).text)
            while (events := self._next_events(deadline, "STOPCAR shutdown", eof_ok=True)) is not None:
                for event in events:
                    action = exchange.on_event(event)
                    if isinstance(action, GiveUp):
                        return  # the signals of terminate() stop it
                    if isinstance(action, Send):
                        self._answer(action.text)
            self.process.wait_exit(deadline - time.monotonic())  # then terminate() escalates
        except (VaspError, OSError):
            pass  # the signals below finish the job
        finally:
            with contextlib.suppress(OSError):
                stopcar.unlink()  # also when VASP ignored it: it would stop the next run at once

    def _stop_with_sigint(self) -> None:
        """VASP with its ML force field ignores STOPCAR reliably only under SIGINT."""
        self.process.signal_session(signal.SIGINT)
        self.process.wait_exit(self.settings.timeouts.stop)

    def terminate(self) -> int | None:
        """SIGTERM, then SIGKILL to the captured process tree; reap; stop the reader threads."""
        code = self.process.terminate(self.settings.timeouts.terminate)
        self._shutdown_stream()
        return code

    def _shutdown_stream(self) -> None:
        self.process.close_pipes()
        if self.stream is not None:
            self.stream.join(1.0)
        if self.stream is None or self.stream.finished:  # a reader still blocked would hang in close()
            self.process.close_output_pipes()
        if self._txt is not None:
            with contextlib.suppress(OSError, ValueError):
                self._txt.flush()
