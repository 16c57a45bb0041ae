"""Pausing one run: choose a strategy, fall back to direct signals, check the ranks really stopped.

The session only asks :class:`Pauser` to ``pause()`` and ``resume()``; each answer is a
:class:`PauseReport` that says what was done and whether the ranks' state confirms it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from ..settings import PauseSettings
from . import tree
from .launch import VaspProcess
from .strategies import STRATEGY_FAILURES, LocalProcessSignal, PauseStrategy, RankFinder, choose_strategy

FALLBACK_SUFFIX = "+psutil"


@dataclass(frozen=True)
class PauseReport:
    """What a pause or resume did, stated honestly."""

    paused: bool
    strategy: str
    verified: bool
    ranks_stopped: int
    ranks_seen: int
    seconds: float
    note: str = ""

    @classmethod
    def refused(cls, note: str) -> PauseReport:
        """Nothing was tried (pausing is off, VASP is not waiting for input, no VASP runs)."""
        return cls(False, "none", False, 0, 0, 0.0, note)


@dataclass(frozen=True)
class PauseHandle(PauseReport):
    """A :class:`PauseReport` that is also a context manager: leaving the block releases the pause."""

    release: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def __enter__(self) -> PauseHandle:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.release is not None:
            self.release()


def stopped_ranks(process: VaspProcess, ranks_of: RankFinder | None = None) -> tuple[int, int]:
    """How many of the run's local ranks are stopped, and how many there are."""
    ranks = (ranks_of or VaspProcess.rank_processes)(process)
    return sum(tree.is_stopped(rank) for rank in ranks), len(ranks)


def wait_for_rank_state(process: VaspProcess, want_stopped: bool, timeout: float,
                        ranks_of: RankFinder | None = None) -> tuple[int, int]:
    """Poll the local ranks' scheduler state (there is no event for another process stopping)."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        stopped, seen = stopped_ranks(process, ranks_of)
        done = stopped == seen if want_stopped else stopped == 0
        if done or time.monotonic() >= deadline:
            return stopped, seen
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


class Pauser:
    """Stops and restarts one run's ranks.

    The strategy comes from ``settings`` (or is given, e.g. in tests) and is chosen once, at the
    first pause. When it raises, or (with ``settings.verify``) leaves ranks running, the ranks it
    knows are stopped directly (:class:`LocalProcessSignal`) and the report's strategy name gets
    ``+psutil``. A pause that did nothing is reported with ``paused=False``.
    """

    def __init__(self, process: VaspProcess, settings: PauseSettings,
                 strategy: PauseStrategy | None = None) -> None:
        self.process = process
        self.settings = settings
        self.strategy = strategy
        self.fallback: LocalProcessSignal | None = None
        self.paused = False

    def pause(self) -> PauseReport:
        """Stop the ranks (the caller checks that VASP waits for input); a no-op when already paused."""
        started = time.monotonic()
        if self.paused:
            return self._report(started, "already paused")
        if self.strategy is None:
            self.strategy = choose_strategy(self.process, self.settings)
        if self.strategy is None:
            return PauseReport.refused("pausing is disabled")
        strategy = self.strategy
        self.fallback = None
        try:
            strategy.pause(self.process)
        except STRATEGY_FAILURES as error:
            fallback = self._direct_signals()
            if not fallback.ranks(self.process):
                return PauseReport(False, strategy.name, False, 0, 0, time.monotonic() - started,
                                   f"{strategy.name} failed ({error}); no local rank found, nothing paused")
            self.fallback = fallback
            fallback.pause(self.process)
            self.paused = True
            if self.settings.verify:
                wait_for_rank_state(self.process, True, self.settings.verify_timeout, fallback.ranks)
            return self._report(started, f"{strategy.name} failed ({error}); used psutil")
        self.paused = True
        return self._report(started, self._verify_pause(strategy))

    def _verify_pause(self, strategy: PauseStrategy) -> str:
        """Wait for the ranks to stop; stop those the strategy missed. Returns the report's note."""
        if not self.settings.verify:
            return ""
        timeout = self.settings.verify_timeout
        stopped, seen = wait_for_rank_state(self.process, True, timeout, self.ranks)
        if stopped < seen and not isinstance(strategy, LocalProcessSignal):
            self.fallback = self._direct_signals()
            self.fallback.pause(self.process)
            wait_for_rank_state(self.process, True, timeout, self.ranks)
            return f"{strategy.name} left {seen - stopped} of {seen} ranks running; used psutil"
        if seen == 0:
            return f"no rank of this run on this node to check; trusted {strategy.name}"
        return ""

    def resume(self) -> PauseReport:
        """Let the ranks run again (through the strategy, and directly where the pause fell back)."""
        started = time.monotonic()
        if not self.paused:
            return self._report(started, "not paused")
        if self.strategy is not None:
            try:
                self.strategy.resume(self.process)
            except STRATEGY_FAILURES:
                self._direct_signals().resume(self.process)
        if self.fallback is not None:
            self.fallback.resume(self.process)
        self.paused = False
        if self.settings.verify:
            wait_for_rank_state(self.process, False, self.settings.verify_timeout, self.ranks)
        return self._report(started, "")

    def ranks(self, process: VaspProcess) -> list[psutil.Process]:
        """The local ranks whose state shows whether a pause worked (the strategy's, once chosen)."""
        return self.strategy.ranks(process) if self.strategy is not None else process.rank_processes()

    def _direct_signals(self) -> LocalProcessSignal:
        """Direct SIGSTOP to the ranks the strategy knows (for Slurm: the step's local tasks)."""

        def targets(process: VaspProcess) -> list[psutil.Process]:
            try:
                return self.ranks(process)
            except STRATEGY_FAILURES:  # e.g. squeue failed: srun is no rank, stop nothing
                return []

        return LocalProcessSignal(targets)

    def _report(self, started: float, note: str) -> PauseReport:
        try:
            stopped, seen = stopped_ranks(self.process, self.ranks) if self.process.alive else (0, 0)
        except STRATEGY_FAILURES:  # the ranks could not be listed (e.g. squeue failed)
            stopped, seen = 0, 0
        name = self.strategy.name if self.strategy else "none"
        if self.fallback is not None:
            name += FALLBACK_SUFFIX
        verified = (stopped == seen and seen > 0) if self.paused else stopped == 0
        return PauseReport(self.paused, name, verified, stopped, seen, time.monotonic() - started, note)
