"""POTCAR reading, and a library of fake POTCARs that ASE and pymatgen accept.

The fake files carry a realistic header (TITEL, VRHFIN, POMASS, ZVAL, ENMAX and the
``END of PSCTR-controll parameters`` marker) and no pseudopotential data.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ase.data import atomic_masses, atomic_numbers, chemical_symbols

from ..errors import InputError

# Valence electrons of the usual (recommended) PAW datasets; other elements use the rule below.
_VALENCE = {
    "H": 1, "He": 2, "Li": 3, "Be": 2, "B": 3, "C": 4, "N": 5, "O": 6, "F": 7, "Ne": 8,
    "Na": 7, "Mg": 2, "Al": 3, "Si": 4, "P": 5, "S": 6, "Cl": 7, "Ar": 8, "K": 9, "Ca": 10,
    "Sc": 11, "Ti": 12, "V": 13, "Cr": 12, "Mn": 13, "Fe": 8, "Co": 9, "Ni": 10, "Cu": 11,
    "Zn": 12, "Ga": 13, "Ge": 14, "As": 5, "Se": 6, "Br": 7, "Kr": 8, "Rb": 9, "Sr": 10,
    "Y": 11, "Zr": 12, "Nb": 13, "Mo": 14, "Tc": 13, "Ru": 14, "Rh": 9, "Pd": 10, "Ag": 11,
    "Cd": 12, "In": 13, "Sn": 14, "Sb": 5, "Te": 6, "I": 7, "Xe": 8, "Cs": 9, "Ba": 10,
    "La": 11, "Hf": 10, "Ta": 11, "W": 14, "Re": 7, "Os": 8, "Ir": 9, "Pt": 10, "Au": 11,
    "Hg": 12, "Tl": 13, "Pb": 14, "Bi": 15,
}
_ENMAX = {"H": 250.0, "C": 400.0, "N": 400.0, "O": 400.0, "F": 400.0}


def valence(symbol: str) -> int:
    if symbol in _VALENCE:
        return _VALENCE[symbol]
    z = atomic_numbers[symbol]
    return min(z, 3 + z % 8)


@dataclass(frozen=True)
class PotcarEntry:
    titel: str
    symbol: str
    zval: float
    enmax: float
    pomass: float


def parse_potcar(text: str) -> list[PotcarEntry]:
    """The datasets of a (possibly concatenated) POTCAR, in file order."""
    entries = []
    for block in re.split(r"End of Dataset", text):
        titel = re.search(r"TITEL\s*=\s*(.+)", block)
        if not titel:
            continue
        zval = re.search(r"ZVAL\s*=\s*([-\d.]+)", block)
        enmax = re.search(r"ENMAX\s*=\s*([-\d.]+)", block)
        pomass = re.search(r"POMASS\s*=\s*([-\d.]+)", block)
        if not zval:
            raise InputError(f"POTCAR: dataset '{titel.group(1).strip()}' has no ZVAL")
        words = titel.group(1).split()
        symbol = (words[1] if len(words) > 1 else words[0]).split("_")[0]
        entries.append(
            PotcarEntry(
                titel=titel.group(1).strip(),
                symbol=symbol,
                zval=float(zval.group(1)),
                enmax=float(enmax.group(1)) if enmax else 400.0,
                pomass=float(pomass.group(1)) if pomass else 1.0,
            )
        )
    if not entries:
        raise InputError("POTCAR contains no dataset (no TITEL line found)")
    return entries


def read_potcar(path) -> list[PotcarEntry]:
    try:
        with open(path) as handle:
            return parse_potcar(handle.read())
    except FileNotFoundError:
        raise InputError(f"No POTCAR found ({path}): VASP needs one dataset per species") from None


def fake_potcar_text(symbol: str, functional: str = "PBE", suffix: str = "") -> str:
    """A fake single-element POTCAR with a realistic header and no real data."""
    if symbol not in atomic_numbers:
        raise ValueError(f"unknown element '{symbol}'")
    zval = valence(symbol)
    mass = atomic_masses[atomic_numbers[symbol]]
    enmax = _ENMAX.get(symbol, 250.0 + 10.0 * (zval % 7))
    titel = f"PAW_{functional} {symbol}{suffix} 01Jan2000"
    return (
        f"  {titel}\n"
        f" {zval:.13f}\n"
        " parameters from PSCTR are:\n"
        f"   VRHFIN ={symbol}: fake valence configuration\n"
        "   LEXCH  = PE\n"
        f"   EATOM  = {100.0 * zval:10.4f} eV, {100.0 * zval / 13.6057:9.4f} Ry\n"
        "\n"
        f"   TITEL  = {titel}\n"
        "   LULTRA =        F    use ultrasoft PP ?\n"
        "   IUNSCR =        1    unscreen: 0-lin 1-nonlin 2-no\n"
        "   RPACOR =    0.000    partial core radius\n"
        f"   POMASS = {mass:8.3f}; ZVAL   = {zval:8.3f}    mass and valenz\n"
        "   RCORE  =    2.000    outmost cutoff radius\n"
        "   RWIGS  =    2.000; RWIGS  =    1.058    wigner-seitz radius (au A)\n"
        f"   ENMAX  = {enmax:8.3f}; ENMIN  = {0.75 * enmax:8.3f} eV\n"
        "   LCOR   =        T    correct aug charges\n"
        "   LPAW   =        T    paw PP\n"
        "   EAUG   =  500.000\n"
        "   END of PSCTR-controll parameters\n"
        " mock-vasp: this file holds no pseudopotential data; placeholder numbers follow\n"
        "   0.00000000E+00  0.10000000E+01  0.20000000E+01\n"
        " End of Dataset\n"
    )


# dataset name suffixes used by ASE's setups ('minimal', 'recommended', 'GW', 'materialsproject')
SUFFIXES = ("", "_pv", "_sv", "_d", "_GW", "_sv_GW", "_d_GW", "_2", "_3", "_h", "_s")


COMPLETE_MARKER = ".mock-vasp-complete"
"""Written into the functional's folder after the last POTCAR of a library of every element."""


def _library_folder(functional: str) -> str:
    return {"PBE": "potpaw_PBE", "LDA": "potpaw"}.get(functional, f"potpaw_{functional}")


def write_potcar_library(root, functional: str = "PBE", symbols=None) -> Path:
    """Write ``root/potpaw_<functional>/<El><suffix>/POTCAR`` (``potpaw`` for LDA) for ASE.

    Every element (or each of ``symbols``) gets the dataset variants ASE's setups may ask for
    (``Rb_pv``, ``Zr_sv``...). Point ``VASP_PP_PATH`` at ``root``. Returns ``root``.
    """
    root = Path(root)
    folder = root / _library_folder(functional)
    for symbol in symbols or chemical_symbols[1:87]:
        for suffix in SUFFIXES:
            target = folder / f"{symbol}{suffix}"
            target.mkdir(parents=True, exist_ok=True)
            staged = target / f".POTCAR.{os.getpid()}"
            staged.write_text(fake_potcar_text(symbol, functional, suffix))
            os.replace(staged, target / "POTCAR")  # a reader of a library being rewritten sees whole files
    if not symbols:
        (folder / COMPLETE_MARKER).write_text("fake POTCARs of every element, written by mock-vasp\n")
    return root


def fake_potcar_library(root, functional: str = "PBE") -> Path:
    """``root`` holding fake POTCARs of every element, written only where no complete library is.

    Reused across calls and processes; a library cut short (no marker after its last POTCAR) is
    written again. Point ``VASP_PP_PATH`` at the returned path.
    """
    root = Path(root)
    if not (root / _library_folder(functional) / COMPLETE_MARKER).is_file():
        write_potcar_library(root, functional)
    return root
