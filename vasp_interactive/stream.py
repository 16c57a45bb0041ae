"""Draining VASP's stdout and stderr continuously, and reading lines with deadlines.

Two reader threads per process: stdout lines go to a queue (and to the ``txt`` mirror), stderr
is drained into a bounded tail so that a flood of megabytes can never block VASP. ``next_line``
is pexpect's idiom: a line, or EOF as an event, or a timeout, all without ``signal.alarm``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import IO, BinaryIO, Literal


@dataclass(frozen=True)
class EOF:
    """``next_line`` returned because VASP's stdout closed (every later call returns it too)."""


@dataclass(frozen=True)
class Timeout:
    """``next_line`` returned because a deadline passed: which one, and how long it waited.

    ``kind``: ``"deadline"`` (the caller's) or ``"silence"`` (nothing printed for too long);
    ``waited``: seconds since the last output, for a silence timeout.
    """

    kind: Literal["deadline", "silence"]
    waited: float


_END = EOF()


class StderrTail:
    """Keeps the last ``limit`` bytes of stderr and counts the rest."""

    def __init__(self, limit: int):
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.total = 0
        self._lock = threading.Lock()

    def add(self, chunk: bytes) -> None:
        with self._lock:
            self.total += len(chunk)
            self._chunks.append(chunk)
            self._size += len(chunk)
            while self._size - len(self._chunks[0]) >= self.limit:
                self._size -= len(self._chunks.popleft())

    def text(self, lines: int = 20) -> str:
        with self._lock:
            data = b"".join(self._chunks)[-self.limit:]
        tail = data.decode(errors="replace").splitlines()[-lines:]
        return "\n".join(tail)


class LineStream:
    """Lines of a child's stdout with timeouts; stderr drained in the background."""

    def __init__(self, stdout: BinaryIO, stderr: BinaryIO, mirror: IO[str] | None,
                 tail_lines: int, stderr_bytes: int):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._mirror = mirror
        self._recent: deque[str] = deque(maxlen=tail_lines)
        self._pending: deque[str] = deque()
        self.stderr = StderrTail(stderr_bytes)
        self.last_activity = time.monotonic()
        self._threads = [
            threading.Thread(target=self._pump_stdout, args=(stdout,), name="vasp-stdout", daemon=True),
            threading.Thread(target=self._pump_stderr, args=(stderr,), name="vasp-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump_stdout(self, stream: BinaryIO) -> None:
        """Read whatever is available, split it into lines, queue them in one batch."""
        partial = b""
        try:
            for chunk in iter(lambda: stream.read(65536), b""):
                data = partial + chunk
                pieces = data.split(b"\n")
                partial = pieces.pop()
                if not pieces:
                    continue
                text = [piece.decode(errors="replace") + "\n" for piece in pieces]
                if self._mirror is not None:
                    try:
                        self._mirror.write("".join(text))
                        self._mirror.flush()
                    except (OSError, ValueError):
                        self._mirror = None
                self._queue.put(text)
        except (OSError, ValueError):
            pass
        finally:
            if partial:
                self._queue.put([partial.decode(errors="replace")])
            self._queue.put(_END)

    def _pump_stderr(self, stream: BinaryIO) -> None:
        try:
            for chunk in iter(lambda: stream.read(65536), b""):
                self.stderr.add(chunk)
        except (OSError, ValueError):
            pass

    def next_line(self, deadline: float | None, silence: float | None) -> str | EOF | Timeout:
        """The next stdout line, ``EOF``, or a ``Timeout`` (deadline is monotonic time)."""
        if self._pending:
            line = self._pending.popleft()
            self._recent.append(line.rstrip("\n"))
            return line
        while True:
            now = time.monotonic()
            limits = []
            if deadline is not None:
                limits.append((deadline - now, "deadline"))
            if silence is not None:
                limits.append((self.last_activity + silence - now, "silence"))
            wait, kind = min(limits) if limits else (None, "deadline")
            if wait is not None and wait <= 0:
                return Timeout(kind, now - self.last_activity if kind == "silence" else 0.0)
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                continue
            self.last_activity = time.monotonic()
            if isinstance(item, EOF):
                self._queue.put(item)  # EOF stays visible to later calls
                return item
            self._pending.extend(item)
            return self.next_line(deadline, silence)

    def recent(self) -> str:
        return "\n".join(self._recent)

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)

    @property
    def finished(self) -> bool:
        """Both readers reached EOF (only then may the pipes be closed under them)."""
        return not any(thread.is_alive() for thread in self._threads)
