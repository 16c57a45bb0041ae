"""One running VASP: launch, exchange structures over stdin/stdout, pause, stop.

The session joins the three pieces: ``VaspProcess`` (launching, signals, reaping), ``LineStream``
(draining the pipes with deadlines) and ``StreamParser`` (the protocol). It knows nothing about
ASE; the calculator sits on top of it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from .errors import (
    LatticeNotStreamable,
    SilenceTimeout,
    StartupTimeout,
    StepTimeout,
    VaspError,
    VaspExited,
    VaspKilled,
    VaspProtocolError,
)
from .outcar import ComputedBy
from .process import (
    LocalProcessSignal,
    PauseReport,
    PauseStrategy,
    VaspProcess,
    choose_strategy,
    stopped_ranks,
    wait_for_rank_state,
)
from .protocol import (
    ErrorMessage,
    HardStop,
    InputAccepted,
    LatticeEcho,
    Phase,
    Prompt,
    PromptKind,
    ScfIteration,
    StepResult,
    StreamParser,
    Variant,
)
from .settings import InteractiveSettings
from .stream import EOF, LineStream, Timeout


@dataclass(frozen=True)
class StepRecord:
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


def format_positions(frac: np.ndarray) -> str:
    return "".join(f"{x:20.16f}{y:20.16f}{z:20.16f}\n" for x, y, z in frac)


def format_lattice(lattice: np.ndarray) -> str:
    return "".join(f"{x:20.14f}{y:20.14f}{z:20.14f}\n" for x, y, z in lattice)


def format_poscar_record(frac: np.ndarray, lattice: np.ndarray, species: Sequence[str],
                         counts: Sequence[int]) -> str:
    """The record VASP >= 6.4.1 reads with ISIF >= 3: no selective dynamics, no velocities."""
    return (
        "vasp_interactive\n1.0\n" + format_lattice(lattice) + " ".join(species) + "\n"
        + " ".join(str(c) for c in counts) + "\nDirect\n" + format_positions(frac)
    )


class VaspSession:
    """A VASP process in interactive mode. All structures are in VASP's atom order."""

    def __init__(self, argv: Sequence[str], directory: Path, species: Sequence[str], counts: Sequence[int],
                 settings: InteractiveSettings, txt: IO[str] | None = None,
                 env: dict[str, str] | None = None, stop_with_signal: bool = False):
        self.directory = Path(directory)
        self.species = list(species)
        self.counts = list(counts)
        self.settings = settings
        self.parser = StreamParser(int(sum(counts)))
        self.process = VaspProcess(argv, self.directory, env)
        self.stream: LineStream | None = None
        self._txt = txt
        self.stop_with_signal = stop_with_signal
        self.records: list[StepRecord] = []
        self.messages: list[ErrorMessage] = []
        self.hard_stop_seen = False
        self.exhausted = False  # VASP ended normally after its last allowed step
        self.ended: VaspError | None = None  # VASP ended abnormally after delivering a result
        self.closed = False
        self.paused = False
        self._strategy: PauseStrategy | None = None
        self._fallback: PauseStrategy | None = None
        self._frac: np.ndarray | None = None
        self._lattice: np.ndarray | None = None

    # ------------------------------------------------------------------ state
    @property
    def version(self) -> str | None:
        return self.parser.version

    @property
    def variant(self) -> Variant:
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
        self._frac, self._lattice = frac.copy(), lattice.copy()
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
        self._after_result(result, deadline, started)
        return result

    def submit(self, frac: np.ndarray, lattice: np.ndarray, cell_changed: bool = False) -> StepResult:
        """Send a structure (and the lattice where the protocol carries it); return its result.

        With ``cell_changed`` and a VASP that turns out not to read a lattice, VASP is stopped and
        ``LatticeNotStreamable`` is raised: the caller restarts it on the new cell.
        """
        if self.paused:
            self.resume()
        if not self.awaiting_input:
            raise VaspProtocolError("VASP is not waiting for a structure (it ended or is mid-step)")
        timeouts = self.settings.timeouts
        deadline = None if timeouts.step is None else time.monotonic() + timeouts.step
        started = time.monotonic()
        self._frac, self._lattice = frac.copy(), lattice.copy()
        self._send(frac, lattice)
        result = self._read_result(deadline, "ionic step", frac=frac, lattice=lattice,
                                   need_lattice=cell_changed)
        self._after_result(result, deadline, started)
        return result

    def _send(self, frac: np.ndarray, lattice: np.ndarray) -> None:
        prompt = self._last_prompt
        if prompt is PromptKind.POSITIONS_AND_LATTICE:
            text = format_poscar_record(frac, lattice, self.species, self.counts)
        else:
            text = format_positions(frac)
        self.parser.expect_input_sent()
        self.stream.last_activity = time.monotonic()
        try:
            self.process.write(text)
        except (BrokenPipeError, OSError):
            pass  # VASP is gone; reading will report how it ended

    def _read_result(self, deadline: float | None, what: str, frac=None, lattice=None,
                     need_lattice: bool = False) -> StepResult:
        while True:
            for event in self._next_events(deadline, what):
                if (need_lattice and isinstance(event, (ScfIteration, StepResult))
                        and not self.parser.variant.streams_lattice):
                    self.terminate()
                    raise LatticeNotStreamable("this VASP reads positions only; the new cell needs a restart",
                                               **self._context())
                if isinstance(event, StepResult):
                    return event
                if isinstance(event, LatticeEcho):
                    sent = lattice if lattice is not None else self._lattice
                    # F13.7 rounds to 5e-8; more than that is a lattice VASP misread
                    if sent is not None and np.abs(event.new - sent).max() > 1e-6 * max(1.0, np.abs(sent).max()):
                        raise self._protocol_failure(
                            f"VASP echoed a lattice other than the one sent: {event.new.tolist()} "
                            f"instead of {np.round(sent, 7).tolist()}")
                if isinstance(event, Prompt) and event.kind is PromptKind.LATTICE:
                    self.parser.expect_input_sent()
                    try:
                        self.process.write(format_lattice(lattice if lattice is not None else self._lattice))
                    except (BrokenPipeError, OSError):
                        pass
                elif isinstance(event, Prompt):
                    raise self._protocol_failure(f"VASP asked for input during the {what} before giving a result")

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
        self.records.append(StepRecord(len(self.records) + 1, result.scf_iterations,
                                       time.monotonic() - started, result.free_energy,
                                       source="dft" if dft else "ml", dft_energy=result.free_energy if dft else None))

    @property
    def _last_prompt(self) -> PromptKind | None:
        return self.parser._last_prompt

    def _next_events(self, deadline: float | None, what: str, eof_ok: bool = False):
        """Events of the next stdout line; raises on EOF (unless eof_ok), timeouts and garbage."""
        assert self.stream is not None
        while True:
            item = self.stream.next_line(deadline, self.settings.timeouts.silence)
            if item is EOF:
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
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            return VaspKilled(f"VASP was killed by {name} {when}", exit_code=code, **context)
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
    def pause(self) -> PauseReport:
        """Stop VASP's ranks (they use no CPU until ``resume``); VASP must be waiting for input."""
        started = time.monotonic()
        if self.paused:
            return self._report(True, started, "already paused")
        if not self.awaiting_input:
            return PauseReport(False, "none", False, 0, 0, 0.0, "VASP is not waiting at a prompt")
        if self._strategy is None:
            self._strategy = choose_strategy(self.process, self.settings.pause)
        if self._strategy is None:
            return PauseReport(False, "none", False, 0, 0, 0.0, "pausing is disabled")
        strategy = self._strategy
        self._fallback = None
        try:
            strategy.pause(self.process)
        except Exception as error:  # noqa: BLE001 - fall back to direct signals
            fallback = self._local_fallback()
            if not fallback.ranks(self.process):
                return PauseReport(False, strategy.name, False, 0, 0, time.monotonic() - started,
                                   f"{strategy.name} failed ({error}); no local rank found, nothing paused")
            self._fallback = fallback
            fallback.pause(self.process)
            self.paused = True
            return self._report(True, started, f"{strategy.name} failed ({error}); used psutil")
        self.paused = True
        note = ""
        if self.settings.pause.verify:
            timeout = self.settings.pause.verify_timeout
            stopped, seen = wait_for_rank_state(self.process, True, timeout, self._ranks)
            if stopped < seen and not isinstance(strategy, LocalProcessSignal):
                self._fallback = self._local_fallback()
                self._fallback.pause(self.process)
                note = f"{strategy.name} left {seen - stopped} of {seen} ranks running; used psutil"
                wait_for_rank_state(self.process, True, timeout, self._ranks)
            elif seen == 0:
                note = f"no rank of this run on this node to check; trusted {strategy.name}"
        return self._report(True, started, note)

    def _ranks(self, process: VaspProcess) -> list:
        return self._strategy.ranks(process) if self._strategy is not None else process.rank_processes()

    def _local_fallback(self) -> LocalProcessSignal:
        """Direct SIGSTOP to the ranks the strategy knows (for Slurm: the step's local tasks)."""

        def targets(process: VaspProcess) -> list:
            try:
                return self._ranks(process)
            except Exception:  # noqa: BLE001 - e.g. squeue failed: srun is no rank, stop nothing
                return []

        return LocalProcessSignal(targets)

    def resume(self) -> PauseReport:
        started = time.monotonic()
        if not self.paused:
            return self._report(False, started, "not paused")
        if self._strategy is not None:
            try:
                self._strategy.resume(self.process)
            except Exception:  # noqa: BLE001
                self._local_fallback().resume(self.process)
        if self._fallback is not None:
            self._fallback.resume(self.process)
        self.paused = False
        if self.settings.pause.verify:
            wait_for_rank_state(self.process, False, self.settings.pause.verify_timeout, self._ranks)
        if self.stream is not None:
            self.stream.last_activity = time.monotonic()
        return self._report(False, started, "")

    def _report(self, paused: bool, started: float, note: str) -> PauseReport:
        try:
            stopped, seen = stopped_ranks(self.process, self._ranks) if self.process.alive else (0, 0)
        except Exception:  # noqa: BLE001 - the ranks could not be listed (e.g. squeue failed)
            stopped, seen = 0, 0
        name = self._strategy.name if self._strategy else "none"
        if self._fallback is not None:
            name += "+psutil"
        verified = (stopped == seen and seen > 0) if paused else stopped == 0
        return PauseReport(paused, name, verified, stopped, seen, time.monotonic() - started, note)

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
        stopcar = self.directory / "STOPCAR"
        timeouts = self.settings.timeouts
        try:
            stopcar.write_text("LABORT = .TRUE.\n")
            deadline = time.monotonic() + timeouts.stop
            frac, lattice = self._frac, self._lattice
            self._send(frac, lattice)
            self._read_result(deadline, "STOPCAR shutdown", frac=frac, lattice=lattice)
            while not self.awaiting_input:
                events = self._next_events(deadline, "STOPCAR shutdown", eof_ok=True)
                if events is None:
                    return
            self._send(frac, lattice)
            while True:
                events = self._next_events(deadline, "STOPCAR shutdown", eof_ok=True)
                if events is None:
                    break
                if any(isinstance(e, Prompt) and e.kind is PromptKind.LATTICE for e in events):
                    self.parser.expect_input_sent()
                    self.process.write(format_lattice(lattice))
                elif any(isinstance(e, Prompt) for e in events):
                    break  # this VASP does not stop after the hard stop; signals will do it
                elif any(isinstance(e, InputAccepted) for e in events):
                    continue
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


def leftover_processes(pid: int) -> list[int]:
    """PIDs still alive in the session led by ``pid`` (for tests and diagnostics)."""
    import psutil

    alive = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == pid and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return alive
