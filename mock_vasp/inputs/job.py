"""Reading and checking the inputs of one run, and the parameters VASP derives from them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..physics.mlff import MlffSettings
from ..physics.scf import ScfParams
from .incar import Incar, read_incar
from .kpoints import KpointSet, from_kspacing, parse_kpoints
from .poscar import Structure, read_poscar
from .potcar import PotcarEntry, read_potcar

HBAR2_2M = 3.80998  # eV Angstrom^2, hbar^2 / 2 m_e
ENTROPY_PER_ATOM = 0.05  # 1/eV: the smearing-entropy model T*S = 0.05 * natoms * SIGMA^2


@dataclass
class Job:
    """Everything the run needs from INCAR, POSCAR, KPOINTS and POTCAR."""

    directory: Path
    incar: Incar
    structure: Structure
    potcar: list[PotcarEntry]
    kpoints: KpointSet
    interactive: bool
    ibrion: int
    nsw: int
    isif: int
    ediffg: float
    potim: float
    istart: int
    iwavpr: int
    ispin: int
    nelect: float
    zval_total: float
    encut: float
    ismear: int
    sigma: float
    lwave: bool
    scf: ScfParams
    nplwv: int
    ngrid: tuple[int, int, int]
    mlff: MlffSettings = field(default_factory=MlffSettings)

    @property
    def natoms(self) -> int:
        return self.structure.natoms

    @property
    def smearing_entropy(self) -> float:
        """T*S of the smearing (eV); 0 for the tetrahedron method."""
        return 0.0 if self.ismear == -5 else ENTROPY_PER_ATOM * self.natoms * self.sigma**2

    @property
    def stress_requested(self) -> bool:
        return self.isif >= 1

    @property
    def ionic_mode(self) -> str:
        if self.interactive:
            return "interactive"
        if self.nsw <= 0 or self.ibrion == -1:
            return "static"
        if self.ibrion in (1, 2, 3):
            return "relax"
        raise InputError(f"INCAR: IBRION = {self.ibrion} is not supported by mock-vasp (use -1, 1, 2 or INTERACTIVE)")


def _reciprocal_lengths(lattice: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.linalg.inv(lattice).T, axis=1)


def _fft_grid(lattice: np.ndarray, encut: float) -> tuple[int, int, int]:
    gmax = math.sqrt(encut / HBAR2_2M)
    grid = []
    for length in np.linalg.norm(lattice, axis=1):
        n = int(math.ceil(2.0 * gmax * length / math.pi)) + 1
        while any(n % p == 0 for p in (7, 11, 13)) or n % 2:
            n += 1
        grid.append(n)
    return tuple(grid)  # type: ignore[return-value]


def load_job(directory: Path) -> Job:
    """Read the four input files, check them against each other and derive VASP's defaults."""
    directory = Path(directory)
    if not (directory / "INCAR").is_file():
        raise InputError("No INCAR found: VASP needs an INCAR in the working directory")
    incar = read_incar(directory / "INCAR")
    potcar = read_potcar(directory / "POTCAR")
    structure = read_poscar(directory / "POSCAR", [p.symbol for p in potcar])
    if len(potcar) != len(structure.species):
        raise InputError(
            f"number of potentials on File POTCAR incompatible with number of species: POTCAR has "
            f"{len(potcar)} datasets ({' '.join(p.symbol for p in potcar)}) but POSCAR lists "
            f"{len(structure.species)} species ({' '.join(structure.species)}); write one dataset per species"
        )
    for entry, species in zip(potcar, structure.species):
        if entry.symbol != species:
            raise InputError(
                f"POSCAR species '{species}' does not match POTCAR dataset '{entry.titel}': "
                "the POTCAR must list the species in the POSCAR's order"
            )
    reciprocal = _reciprocal_lengths(structure.lattice)
    isym = incar.get_int("ISYM", 2)
    kpath = directory / "KPOINTS"
    if kpath.is_file():
        kpoints = parse_kpoints(kpath.read_text(), reciprocal, time_reversal=isym >= 0)
    else:
        kspacing = incar.get_float("KSPACING", 0.5)
        if kspacing <= 0:
            raise InputError("INCAR: KSPACING must be positive (or provide a KPOINTS file)")
        kpoints = from_kspacing(kspacing, reciprocal, incar.get_bool("KGAMMA", True))

    interactive = incar.get_bool("INTERACTIVE", False)
    nsw = incar.get_int("NSW", 0)
    ibrion = incar.get_int("IBRION", -1 if nsw <= 1 else 0)
    if interactive:
        ibrion = 11
    isif = incar.get_int("ISIF", 0 if ibrion == 0 else 2)
    istart = incar.get_int("ISTART", 1 if (directory / "WAVECAR").is_file() else 0)
    iwavpr = incar.get_int("IWAVPR", 11 if interactive else (2 if ibrion in (0, 1, 2, 3) else 0))
    ispin = incar.get_int("ISPIN", 1)
    zval_total = sum(p.zval * n for p, n in zip(potcar, structure.counts))
    nelect = incar.get_float("NELECT", zval_total)
    encut = incar.get_float("ENCUT", max(p.enmax for p in potcar))
    natoms = structure.natoms
    nbands_default = max(int(math.ceil((nelect + 2) / 2)) + max(natoms // 2, 3), int(0.6 * nelect))
    algo = (incar.get_str("ALGO", "Normal") or "Normal").capitalize()
    algo = {"Veryfast": "VeryFast", "V": "VeryFast", "F": "Fast", "N": "Normal"}.get(algo, algo)
    if algo not in ("Normal", "Fast", "VeryFast"):
        raise InputError(f"INCAR: ALGO = {algo} is not supported by mock-vasp (use Normal, Fast or VeryFast)")
    default_nelmdl = 0
    if istart == 0:
        default_nelmdl = -12 if algo == "VeryFast" else -5
    scf = ScfParams(
        ediff=incar.get_float("EDIFF", 1e-4),
        nelm=incar.get_int("NELM", 60),
        nelmin=incar.get_int("NELMIN", 2),
        nelmdl=incar.get_int("NELMDL", default_nelmdl),
        amix=incar.get_float("AMIX", 0.4),
        maxmix=max(2, abs(incar.get_int("MAXMIX", 45))),
        algo=algo,
        nbands=incar.get_int("NBANDS", nbands_default),
        nkpts=len(kpoints.weights),
    )
    if scf.ediff <= 0 or scf.nelm < 1:
        raise InputError("INCAR: EDIFF must be positive and NELM at least 1")
    ngrid = _fft_grid(structure.lattice, encut)
    return Job(
        directory=directory,
        incar=incar,
        structure=structure,
        potcar=potcar,
        kpoints=kpoints,
        interactive=interactive,
        ibrion=ibrion,
        nsw=nsw,
        isif=isif,
        ediffg=incar.get_float("EDIFFG", scf.ediff * 10),
        potim=incar.get_float("POTIM", 0.5),
        istart=istart,
        iwavpr=iwavpr,
        ispin=ispin,
        nelect=nelect,
        zval_total=zval_total,
        encut=encut,
        ismear=incar.get_int("ISMEAR", 1),
        sigma=incar.get_float("SIGMA", 0.2),
        lwave=incar.get_bool("LWAVE", True),
        scf=scf,
        nplwv=int(np.prod(ngrid)),
        ngrid=ngrid,
        mlff=_mlff_settings(incar),
    )


def _mlff_settings(incar) -> MlffSettings:
    settings = MlffSettings.from_incar(incar)
    if settings.enabled and settings.mode != "train":
        raise InputError(f"INCAR: ML_MODE = {settings.mode}: mock-vasp emulates the force field's training mode only "
                         "(ML_MODE = train, or ML_ISTART = 0 or 1); a 'run' needs an ML_AB file it does not write")
    return settings
