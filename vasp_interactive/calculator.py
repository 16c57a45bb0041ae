"""``VaspInteractive``: an ASE calculator that keeps one VASP process alive across ionic steps."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import numpy as np
from ase.calculators.calculator import (
    Calculator,
    CalculatorSetupError,
    PropertyNotImplementedError,
    all_changes,
)

from .errors import MlStepRefused, RestartRefused, VaspOutputIncomplete, VaspSetupError
from .outputs import OutcarFollower, VasprunFollower
from .plan import Refuse, Restart, RestartReason, Reuse, Stream, VaspState, plan_step, restart_for
from .process import PauseHandle, PauseReport, resolve_command
from .protocol import LatticeCapability, StepResult
from .session import CellNotStreamed, IonicStepRecord, VaspSession
from .settings import FORCED_TAGS, InteractiveSettings, MlSteps, PauseSettings, RestartPolicy, Timeouts

COMMAND_VARIABLES = ("ASE_VASP_COMMAND", "VASP_COMMAND")
_OWN_KEYWORDS = ("command", "directory", "txt", "settings", "timeouts", "pause", "restart", "ml_steps")
VASP_DEFAULT_EDIFF = 1e-4  # eV, VASP's EDIFF when INCAR leaves it out


class _Holder:
    """Holds the running session for the safety net, without keeping the calculator alive."""

    def __init__(self) -> None:
        self.session: VaspSession | None = None

    def close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close()


def find_command(command: str | list[str] | None) -> list[str]:
    """The VASP command from ``command=``, or ASE's configuration (ASE_VASP_COMMAND, VASP_COMMAND)."""
    if command is None:
        from ase.config import cfg

        for name in COMMAND_VARIABLES:
            if cfg.get(name):
                command = cfg[name]
                break
        else:
            if cfg.get("VASP_SCRIPT"):
                raise VaspSetupError("VASP_SCRIPT is not supported by VaspInteractive: it needs a command "
                                     "whose stdin and stdout are VASP's; set ASE_VASP_COMMAND instead")
            raise VaspSetupError("no VASP command: pass command='mpirun -np 4 vasp_std' or set "
                                 "ASE_VASP_COMMAND (or VASP_COMMAND)")
    if isinstance(command, str) and any(mark in command.split() or mark in command for mark in (">", "|", "<")):
        raise VaspSetupError(
            f"the VASP command {command!r} redirects or pipes VASP's output; the interactive protocol needs "
            "stdin and stdout. Remove the redirection (stdout is mirrored to txt=)"
        )
    return resolve_command(command)


@contextlib.contextmanager
def potcar_library(path: Path | None) -> Iterator[None]:
    """``VASP_PP_PATH`` set to ``path`` while ASE writes the inputs (ASE reads it from the environment only)."""
    if path is None:
        yield
        return
    previous = os.environ.get("VASP_PP_PATH")
    os.environ["VASP_PP_PATH"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["VASP_PP_PATH"]
        else:
            os.environ["VASP_PP_PATH"] = previous


class VaspInteractive(Calculator):
    """VASP in interactive mode behind ASE's calculator interface.

    Accepts the VASP parameters of ASE's ``Vasp`` (``xc``, ``encut``, ``kpts``, ``isif``...), plus
    ``command``, ``directory``, ``txt`` (stdout mirror: a path, ``'-'`` for stdout, or None), and
    ``settings`` (:class:`InteractiveSettings`) or its parts ``timeouts``, ``pause``, ``restart``,
    and ``pp_path``: the POTCAR library for this calculator (default: ``$VASP_PP_PATH``).

    Use it as a context manager, or call ``close()``; a safety net stops VASP at interpreter exit
    if neither happened. ``with calc.paused():`` stops VASP's ranks while Python works.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]
    name = "vasp_interactive"
    ignored_changes = {"initial_charges"}

    def __init__(self, command: str | list[str] | None = None, directory: str | os.PathLike = ".",
                 txt: str | IO[str] | None = "vasp.out", settings: InteractiveSettings | None = None,
                 timeouts: Timeouts | None = None, pause: PauseSettings | None = None,
                 restart: RestartPolicy | None = None, ml_steps: MlSteps | None = None,
                 pp_path: str | os.PathLike | None = None, **vasp_parameters: Any):
        settings = settings or InteractiveSettings()
        if ml_steps is not None:
            settings = replace(settings, ml_steps=ml_steps)
        if timeouts is not None:
            settings = replace(settings, timeouts=timeouts)
        if pause is not None:
            settings = replace(settings, pause=pause)
        if restart is not None:
            settings = replace(settings, restart=restart)
        self.settings = settings
        Calculator.__init__(self, directory=str(directory))
        self.argv = find_command(command)
        self.pp_path = None if pp_path is None else Path(pp_path)
        if self.pp_path is not None and not self.pp_path.is_dir():
            raise VaspSetupError(f"pp_path {str(pp_path)!r} is not a directory; give the folder that holds "
                                 "potpaw_PBE/ (what VASP_PP_PATH would be)")
        self.txt = txt
        self.vasp_parameters = self._owned_parameters(dict(vasp_parameters))
        self._input = self._make_input(self.vasp_parameters)
        self._holder = _Holder()
        self._finalizer = weakref.finalize(self, self._holder.close)
        self._txt_handle: IO[str] | None = None
        self._sort: list[int] = []
        self._resort: list[int] = []
        self._species: list[str] = []
        self._outcar: OutcarFollower | None = None
        self._vasprun: VasprunFollower | None = None
        self._parameters_changed = False
        self.steps: list[IonicStepRecord] = []
        self._last_result = None
        self.restarts = 0
        self.call_seconds: list[float] = []
        self._pause_depth = 0

    # ------------------------------------------------------------------ parameters
    def _owned_parameters(self, params: dict[str, Any]) -> dict[str, Any]:
        """Apply the tags this calculator must own, warning about each user value it replaces."""
        lowered = {k.lower(): v for k, v in params.items()}
        if lowered.get("interactive") is False:
            raise VaspSetupError("interactive=False cannot work with VaspInteractive; use ase's Vasp")
        for tag, (value, reason) in FORCED_TAGS.items():
            given = lowered.get(tag)
            if tag == "iwavpr" and given in (11, 12, 13):
                continue  # in-memory prediction variants are all fine
            if tag == "ibrion" and given == 11:
                given = None
            if given is not None and given != value:
                warnings.warn(f"VaspInteractive sets {tag.upper()} = {value} (you gave {given}): {reason}",
                              stacklevel=3)
            lowered[tag] = value
        nsw = lowered.get("nsw")
        if nsw is None:
            lowered["nsw"] = self.settings.nsw
        elif nsw < 2:
            raise VaspSetupError(f"NSW = {nsw} leaves VASP no budget for a second structure; "
                                 "leave nsw unset (default 2000) or use ase's Vasp for single points")
        if "isym" not in lowered:
            lowered["isym"] = self.settings.isym
        elif lowered["isym"] != 0:
            warnings.warn(f"ISYM = {lowered['isym']}: VASP keeps the symmetry of the first structure; "
                          "a move that breaks it gives wrong energies and forces (ISYM = 0 avoids this)",
                          stacklevel=3)
        for own in _OWN_KEYWORDS:
            lowered.pop(own, None)
        return lowered

    @staticmethod
    def _make_input(params: dict[str, Any]):
        from ase.calculators.vasp.create_input import GenerateVaspInput

        generator = GenerateVaspInput()
        try:
            generator.set(**params)
        except (TypeError, ValueError, NotImplementedError) as error:
            raise VaspSetupError(f"invalid VASP parameter: {error}") from error
        return generator

    def set(self, **kwargs):
        changed = Calculator.set(self, **kwargs)
        vasp = {k: v for k, v in kwargs.items() if k not in _OWN_KEYWORDS}
        if vasp:
            merged = dict(self.vasp_parameters)
            merged.update({k.lower(): v for k, v in vasp.items()})
            merged = self._owned_parameters(merged)
            if merged != self.vasp_parameters:
                self.vasp_parameters = merged
                self._input = self._make_input(merged)
                self._parameters_changed = True
                self._last_result = None
                self.reset()
        return changed

    @property
    def isif(self) -> int:
        value = self.vasp_parameters.get("isif")
        return 2 if value is None else int(value)

    # ------------------------------------------------------------------ ASE entry point
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        started = time.perf_counter()
        try:
            Calculator.calculate(self, atoms, properties, system_changes)  # creates the directory
        except OSError as error:
            raise VaspSetupError(f"cannot create the run directory {self.directory}: {error}; choose a writable "
                                 "directory=") from error
        atoms = self.atoms
        session = self._holder.session
        plan = plan_step(set(system_changes) - self.ignored_changes, _vasp_state(session),
                         session.lattice_capability if session is not None else LatticeCapability.UNKNOWN,
                         self.settings, parameters_changed=self._parameters_changed,
                         has_result=self._last_result is not None)
        if isinstance(plan, Reuse):  # same structure, a property asked for later (stress): no new ionic step
            self._store(self._last_result, properties)
            return
        self._pause_depth = 0  # computing resumes VASP: every pause taken before has ended
        if isinstance(plan, Stream):
            result = self._stream(atoms, plan.cell_changed)
            if isinstance(result, CellNotStreamed):  # the probe: this VASP reads no lattice
                result = self._start(atoms, restart_for(RestartReason.CELL, self.settings.restart))
        else:
            result = self._start(atoms, plan)
        result = self._refuse_ml_step(atoms, result)
        self._store(result, properties)
        self.call_seconds.append(time.perf_counter() - started)

    # ------------------------------------------------------------------ starting and streaming
    def _start(self, atoms, plan: Restart | Refuse) -> StepResult:
        if isinstance(plan, Refuse):
            raise RestartRefused(f"VASP would have to restart: {plan.what} (restart policy says error)")
        if plan.warn and plan.reason is RestartReason.ENDED:
            session = self._holder.session
            if session is not None and session.ended is not None:
                why = str(session.ended)
            elif session is not None:  # it died while waiting for input (a killed rank, a cancelled srun)
                why = (f"its process is gone (exit code {session.process.returncode}) while it waited "
                       "for the next structure")
            else:
                why = "no VASP process"
            warnings.warn(f"VaspInteractive restarts VASP, which ended after its last result: {why}",
                          stacklevel=4)
        elif plan.warn:
            warnings.warn(f"VaspInteractive restarts VASP: {plan.what}", stacklevel=4)
        self._check_atoms(atoms)
        capability = self._capability_for_next()
        self._close_session()
        self._last_result = None
        self._pause_depth = 0
        directory = Path(self.directory)  # created by Calculator.calculate (an OSError there is typed)
        if not plan.keeps_wavecar:
            with contextlib.suppress(OSError):
                (directory / "WAVECAR").unlink()
        with potcar_library(self.pp_path):
            library = os.environ.get("VASP_PP_PATH", "VASP_PP_PATH is not set")
            try:
                self._input.initialize(atoms)
            except (RuntimeError, KeyError, ValueError) as error:  # ASE: unknown element, POTCAR not found
                raise VaspSetupError(f"cannot set up VASP's inputs: {str(error).strip().splitlines()[0]} ... Check "
                                     "the elements, xc/setups, and that the POTCAR library (pp_path= or "
                                     f"VASP_PP_PATH) holds them ({library})") from error
            try:
                self._input.write_input(atoms, directory=str(directory))
            except OSError as error:
                raise VaspSetupError(f"cannot write VASP's inputs into {directory}: {error}") from error
        self._sort = list(self._input.sort)
        self._resort = list(self._input.resort)
        self._species = [symbol for symbol, _ in self._input.symbol_count]
        counts = [count for _, count in self._input.symbol_count]
        self._outcar = OutcarFollower(directory / "OUTCAR")
        self._vasprun = VasprunFollower(directory / "vasprun.xml")
        session = VaspSession(self.argv, directory, self._species, counts, self.settings,
                              txt=self._open_txt(directory), stop_with_signal=self.uses_force_field,
                              lattice_capability=capability)
        self._holder.session = session
        self._parameters_changed = False
        if plan.counts_as_restart:
            self.restarts += 1
        frac, cell = self._vasp_structure(atoms)
        result = session.start(frac, cell)
        self._record_step(session)
        return result

    def _capability_for_next(self) -> LatticeCapability:
        """What the next VASP is known to do with a new cell: what this one learnt, unless the
        parameters changed since it started (with VASP >= 6.4.1, ISIF decides the protocol)."""
        session = self._holder.session
        if session is None or self._parameters_changed:
            return LatticeCapability.UNKNOWN
        return session.lattice_capability

    def _stream(self, atoms, cell_changed: bool) -> StepResult | CellNotStreamed:
        self._check_atoms(atoms)
        session = self._holder.session
        frac, cell = self._vasp_structure(atoms)
        result = session.submit(frac, cell, cell_changed=cell_changed)
        if isinstance(result, StepResult):
            self._record_step(session)
        return result

    @property
    def uses_force_field(self) -> bool:
        """VASP runs its machine-learned force field (``ML_LMLFF``): steps may come without DFT."""
        custom = self.vasp_parameters.get("custom") or {}
        return bool(self.vasp_parameters.get("ml_lmlff") or custom.get("ml_lmlff"))

    def _record_step(self, session: VaspSession) -> None:
        record = session.records[-1]
        if self.uses_force_field and self._outcar is not None:
            self._outcar.update()
            if len(self._outcar.steps) >= record.index and self._outcar.steps[record.index - 1].ml is not None:
                record = replace(record, ml_energy=self._outcar.steps[record.index - 1].ml.free_energy)
        self.steps.append(record)

    def _refuse_ml_step(self, atoms, result):
        """Apply ``settings.ml_steps`` to a step the force field answered; the result to use."""
        if result.scf_iterations > 0 or not self.uses_force_field or self.settings.ml_steps == "accept":
            return result
        if self.settings.ml_steps == "raise":
            self._last_result = None
            self.reset()
            raise MlStepRefused(
                f"VASP's machine-learned force field answered ionic step {result.step} without DFT, and "
                "ml_steps='raise' asks for DFT labels only. Use ml_steps='dft' to have it recomputed by DFT, "
                "'accept' to take it, or run without ML_LMLFF", directory=str(self.directory))
        warnings.warn(f"ionic step {result.step} came from VASP's force field: VaspInteractive restarts VASP "
                      "with ML_LMLFF = .FALSE. (ml_steps='dft') and computes it by DFT", stacklevel=4)
        custom = {k: v for k, v in (self.vasp_parameters.get("custom") or {}).items() if k != "ml_lmlff"}
        self.vasp_parameters = {**self.vasp_parameters, "ml_lmlff": False, "custom": custom}
        self._input = self._make_input(self.vasp_parameters)
        return self._start(atoms, restart_for(RestartReason.FORCE_FIELD, self.settings.restart))

    def _vasp_structure(self, atoms) -> tuple[np.ndarray, np.ndarray]:
        frac = atoms.cell.scaled_positions(atoms.positions)[self._sort]
        return frac, np.array(atoms.cell)

    @staticmethod
    def _check_atoms(atoms) -> None:
        """Refuse, before anything is written or launched, structures VASP cannot compute."""
        from ase.calculators.vasp.vasp import check_atoms

        if len(atoms) == 0:
            raise VaspSetupError("the Atoms object has no atoms: give VaspInteractive a structure to compute")
        if not np.all(np.isfinite(atoms.positions)):
            bad = sorted({int(i) for i in np.argwhere(~np.isfinite(atoms.positions))[:, 0]})
            raise VaspSetupError(f"non-finite positions (atoms {bad[:10]}): an optimizer diverged or the input is "
                                 "broken; nothing was sent to VASP")
        if not np.all(np.isfinite(np.array(atoms.cell))):
            raise VaspSetupError("the cell has non-finite entries; nothing was sent to VASP")
        try:
            check_atoms(atoms)
        except CalculatorSetupError as error:
            raise VaspSetupError(str(error)) from error

    def _open_txt(self, directory: Path) -> IO[str] | None:
        if self._txt_handle is not None and self._txt_handle not in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):
                self._txt_handle.close()
        txt = self.txt
        if txt is None:
            self._txt_handle = None
        elif txt == "-":
            self._txt_handle = sys.stdout
        elif isinstance(txt, (str, os.PathLike)):
            path = Path(txt)
            self._txt_handle = open(path if path.is_absolute() else directory / path, "a")
        else:
            self._txt_handle = txt
        return self._txt_handle

    # ------------------------------------------------------------------ results
    def _store(self, result, properties) -> None:
        self._last_result = result
        self.results = {
            "energy": result.energy_sigma0,
            "free_energy": result.free_energy,
            "forces": result.forces[self._resort],
        }
        if "stress" in properties:
            self.results["stress"] = self._stress(result.step)

    def _stress(self, step: int) -> np.ndarray:
        if self.isif < 1:
            raise PropertyNotImplementedError("ISIF = 0: VASP computes no stress; set isif=2 (or 3)")
        for follower in (self._outcar, self._vasprun):
            if follower is None:
                continue
            follower.update()
            if step in follower.stress:
                return follower.stress[step]
        raise VaspOutputIncomplete(
            f"the stress of ionic step {step} is not in OUTCAR or vasprun.xml yet: this VASP build writes "
            "its files in blocks while it waits for input. Stress cannot be streamed with it; rebuild VASP "
            "with unbuffered output (e.g. FORT_BUFFERED=false / GFORTRAN_UNBUFFERED_ALL=1) or avoid cell "
            "relaxations", directory=str(self.directory))

    def scf_energy_tolerance(self, n_atoms: int) -> float:
        """VASP's EDIFF for ``n_atoms`` atoms (eV): how far apart two of its energies may be by SCF alone.

        ``ediff`` as given, ``ediff_per_atom`` (ASE's) times ``n_atoms``, else VASP's default 1e-4.
        """
        if self.vasp_parameters.get("ediff") is not None:
            return float(self.vasp_parameters["ediff"])
        if self.vasp_parameters.get("ediff_per_atom") is not None:
            return float(self.vasp_parameters["ediff_per_atom"]) * n_atoms
        return VASP_DEFAULT_EDIFF

    # ------------------------------------------------------------------ pausing and closing
    @property
    def session(self) -> VaspSession | None:
        """The running (or last) VASP; None before the first calculation and after ``close()``."""
        return self._holder.session

    @property
    def outcar(self) -> OutcarFollower | None:
        """The reader following this run's OUTCAR (call ``update()`` for what VASP appended)."""
        return self._outcar

    @property
    def vasprun(self) -> VasprunFollower | None:
        """The reader following this run's vasprun.xml (call ``update()`` for what VASP appended)."""
        return self._vasprun

    def pause(self) -> PauseHandle:
        """Stop VASP's ranks until :meth:`resume` (they use no CPU meanwhile); returns what happened.

        The result is also a context manager: ``with calc.pause():`` resumes at the end of the block.
        Pauses nest: an inner block leaves VASP paused for the outer one.
        """
        self._pause_depth += 1
        session = self._holder.session
        if session is None:
            report = PauseReport.refused("VASP is not running")
        else:
            report = session.pause()
        return PauseHandle(**report.__dict__, release=self._release_pause)

    def resume(self) -> PauseReport:
        """Let VASP's ranks run again (whatever the nesting of pauses)."""
        self._pause_depth = 0
        session = self._holder.session
        if session is None:
            return PauseReport.refused("VASP is not running")
        return session.resume()

    def _release_pause(self) -> None:
        self._pause_depth = max(0, self._pause_depth - 1)
        if self._pause_depth == 0:
            session = self._holder.session
            if session is not None and session.paused:
                session.resume()

    @contextlib.contextmanager
    def paused(self) -> Iterator[PauseReport]:
        """Stop VASP's ranks for the duration of the block (the same as ``with calc.pause():``)."""
        with self.pause() as report:
            yield report

    def _close_session(self) -> None:
        self._holder.close()

    def close(self) -> None:
        """Stop VASP (clean STOPCAR stop when possible, keeping WAVECAR). Safe to call twice."""
        self._close_session()
        if self._txt_handle is not None and self._txt_handle not in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError):
                self._txt_handle.close()
        self._txt_handle = None

    def __enter__(self) -> VaspInteractive:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _vasp_state(session: VaspSession | None) -> VaspState:
    if session is None:
        return VaspState.NOT_STARTED
    if session.usable:
        return VaspState.WAITING
    return VaspState.EXHAUSTED if session.exhausted else VaspState.ENDED
