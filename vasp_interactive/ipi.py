"""i-PI client mode: one long-lived VASP answering an i-PI server over a socket.

An i-PI server (i-PI itself, or ASE's ``SocketIOCalculator``) sends positions and cell; the
client computes them with :class:`~vasp_interactive.VaspInteractive` (one VASP kept alive, new
structures streamed) and sends energy, forces and virial back. The wire protocol is ASE's
``SocketClient``; this module only joins it to the calculator:

* VASP is paused (its ranks stopped) while the client waits for the next request, and resumed
  when one arrives;
* when the server ends the exchange (``EXIT``) or its socket closes, VASP is stopped cleanly
  (STOPCAR) and the client returns;
* when the client itself is killed, the calculator's watchdog takes VASP down with it.

``vasp-interactive ipi --unix NAME`` (or ``--host H --port P``) runs it from a run directory.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ase import Atoms

from .calculator import VaspInteractive
from .errors import VaspSetupError


@dataclass(frozen=True)
class IpiReport:
    """What one served connection did."""

    requests: int  # structures computed for the server
    paused: int  # how often VASP was paused while the client waited
    restarts: int  # VASP restarts (a cell change this VASP cannot stream, ...)


def serve_ipi(atoms: Atoms, calc: VaspInteractive, *, unixsocket: str | None = None, host: str = "localhost",
              port: int | None = None, use_stress: bool | None = None, timeout: float | None = None,
              log=None, on_request: Callable[[int], None] | None = None) -> IpiReport:
    """Serve ``calc`` to an i-PI server until it says EXIT or goes away; VASP is closed at the end.

    ``atoms``: the structure in the server's atom order (species and count must match the server's).
    ``use_stress``: send the virial (default: for periodic structures, unless ISIF = 0).
    """
    from ase.calculators.socketio import SocketClient

    if (unixsocket is None) == (port is None):
        raise VaspSetupError("give exactly one of unixsocket (a name) or port (with host) for the i-PI server")
    if use_stress is None:
        use_stress = bool(any(atoms.pbc)) and calc.isif >= 1
    requests = paused = 0
    try:
        client = SocketClient(host=host, port=port, unixsocket=unixsocket, timeout=timeout, log=log)
    except OSError as error:
        calc.close()
        where = f"UNIX socket {unixsocket!r}" if unixsocket else f"{host}:{port}"
        raise VaspSetupError(f"cannot connect to the i-PI server at {where}: {error}; start the server first") \
            from error
    atoms.calc = calc
    try:
        for _ in client.irun(atoms, use_stress=use_stress):
            requests += 1
            if on_request is not None:
                on_request(requests)
            if calc.pause().paused:  # the server may take long: VASP waits without using CPU
                paused += 1
    finally:
        client.close()
        calc.close()
    return IpiReport(requests, paused, calc.restarts)


_BOOL = {".true.": True, "t": True, ".t.": True, ".false.": False, "f": False, ".f.": False}


def incar_parameters(path: str | Path) -> dict[str, object]:
    """An INCAR as calculator keywords: typed where ASE knows the tag, in ``custom`` otherwise.

    ``TAG = value`` lines, several per line with ``;``, comments after ``#`` or ``!``.
    """
    from ase.calculators.vasp.create_input import GenerateVaspInput

    known: dict[str, object] = {}
    custom: dict[str, object] = {}
    probe = GenerateVaspInput()
    for raw in Path(path).read_text().splitlines():
        line = re.split(r"[#!]", raw, maxsplit=1)[0]
        for statement in line.split(";"):
            if "=" not in statement:
                continue
            tag, value = (part.strip() for part in statement.split("=", 1))
            if not tag:
                continue
            parsed = _parse_value(value)
            try:
                probe.set(**{tag.lower(): parsed})
            except (TypeError, ValueError, NotImplementedError):
                custom[tag.lower()] = value
            else:
                known[tag.lower()] = parsed
    if custom:
        known["custom"] = custom
    return known


def _parse_value(text: str) -> object:
    lowered = text.lower()
    if lowered in _BOOL:
        return _BOOL[lowered]
    words = text.split()
    if len(words) > 1:
        try:
            return [float(w) for w in words]
        except ValueError:
            return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text
