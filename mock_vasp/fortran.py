"""Fortran-style number formatting as VASP prints it."""

from __future__ import annotations

import math

import numpy as np


def non_finite(value: float, width: int) -> str:
    """A NaN or infinity as Fortran prints it in a numeric field: ``NaN``, ``Infinity`` or ``Inf``
    (a minus sign before a negative infinity), right-justified; asterisks where even that does not fit."""
    if math.isnan(value):
        text = "NaN"
    else:
        sign = "-" if value < 0 else ""
        text = sign + ("Infinity" if width >= len(sign) + 8 else "Inf")
    return text.rjust(width) if len(text) <= width else "*" * width


def fortran_e(value: float, width: int, digits: int) -> str:
    """Fortran ``Ew.d``: mantissa in [0.1, 1), e.g. -0.502267845488E+01 (leading 0 dropped if tight)."""
    if not math.isfinite(value):
        return non_finite(value, width)
    if value == 0.0:
        mantissa, exponent = 0.0, 0
    else:
        exponent = math.floor(math.log10(abs(value))) + 1
        mantissa = abs(value) / 10.0**exponent
        if round(mantissa, digits) >= 1.0:
            mantissa /= 10.0
            exponent += 1
        elif round(mantissa, digits) < 0.1:
            mantissa *= 10.0
            exponent -= 1
    body = f"{mantissa:.{digits}f}"
    sign = "-" if value < 0 else ""
    suffix = f"E{'+' if exponent >= 0 else '-'}{abs(exponent):02d}"
    text = sign + body + suffix
    if len(text) > width:
        text = sign + body[1:] + suffix
    if len(text) > width:
        return "*" * width
    return text.rjust(width)


def fortran_f(value: float, width: int, digits: int) -> str:
    """Fortran ``Fw.d``: asterisks when the number does not fit, as VASP prints overflows."""
    if not math.isfinite(value):
        return non_finite(value, width)
    text = f"{value:{width}.{digits}f}"
    if len(text) > width:
        return "*" * width
    return text


def scf_line(algorithm: str, index: int, energy: float, de: float, deps: float, ncg: int,
             rms: float, rms_charge: float | None) -> str:
    line = (
        f"{algorithm}:{index:4d}{fortran_e(energy, 23, 12)}{fortran_e(de, 15, 5)}"
        f"{fortran_e(deps, 15, 5)}{ncg:6d}{fortran_e(rms, 12, 3)}"
    )
    if rms_charge is not None:
        line += fortran_e(rms_charge, 13, 3)
    return line


SCF_HEADER = "       N       E                     dE             d eps       ncg     rms          rms(c)"


def energy_line(step: int, free_energy: float, e0: float, de: float, magnetization: float | None) -> str:
    line = (
        f"{step:4d} F= {fortran_e(free_energy, 14, 8)} E0= {fortran_e(e0, 14, 8)}"
        f"  d E ={fortran_e(de, 12, 6)}"
    )
    if magnetization is not None:
        line += f"  mag={magnetization:11.4f}"
    return line


def vector_line(values) -> str:
    """One ``3F14.7`` line (forces, echoed positions)."""
    return "".join(fortran_f(float(v), 14, 7) for v in values)


def block(rows, fmt: str, prefix: str = "", suffix: str = "\n") -> str:
    """Format an (N, k) array with one C-level ``%`` call: ``prefix + fmt % row + suffix`` per row."""
    array = np.asarray(rows, dtype=float)
    if array.size == 0:
        return ""
    line = prefix + fmt + suffix
    return (line * len(array)) % tuple(array.ravel())


def fits(array: np.ndarray, width: int, digits: int) -> bool:
    """Every value prints in ``Fw.d`` without overflow (a minus sign takes one digit's place)."""
    if not np.all(np.isfinite(array)):
        return False
    limit = 10.0 ** (width - digits - 2)  # the integer digits left beside the sign and the point
    return bool(np.all((array > -limit + 0.5 * 10.0**-digits) & (array < 10 * limit - 0.5 * 10.0**-digits)))


def vector_block(rows) -> str:
    """Rows of ``3F14.7`` (forces, echoed positions), asterisks where a value overflows, ``NaN`` for a NaN."""
    array = np.asarray(rows, dtype=float)
    if fits(array, 14, 7):
        return block(array, "%14.7f%14.7f%14.7f")
    return "".join(vector_line(row) + "\n" for row in array)
