"""vasprun.xml written incrementally, in the layout ASE's and pymatgen's readers expect."""

from __future__ import annotations

import time
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from ..config import EmulatedVersion
from ..fortran import block
from ..inputs.job import Job
from ..physics.scf import ScfLine
from .outfiles import BlockFile, IonicResult


def _v(values, indent: int, fmt: str = "{:16.8f}", attrs: str = "") -> str:
    return " " * indent + f"<v{attrs}>" + "".join(fmt.format(float(x)) for x in values) + " </v>\n"


def _i(name: str, value, indent: int, kind: str | None = None) -> str:
    attr = f' type="{kind}"' if kind else ""
    if isinstance(value, bool):
        text = " T  " if value else " F  "
    elif isinstance(value, int):
        text = f"{value:6d}"
    elif isinstance(value, float):
        text = f"{value:16.8f}"
    else:
        text = escape(str(value))
    return " " * indent + f'<i{attr} name="{name}">{text}</i>\n'


def _incar_item(tag: str, value: str) -> str:
    """An INCAR tag with the type VASP gives it in vasprun.xml."""
    words = value.split()
    first = words[0].upper() if words else ""
    if first in (".TRUE.", ".FALSE.", "T", "F", ".T.", ".F."):
        flag = "T" if "T" in first.replace("F", "") else "F"
        return f'  <i type="logical" name="{escape(tag)}"> {flag}  </i>\n'
    try:
        numbers = [float(w) for w in words]
    except ValueError:
        return f'  <i type="string" name="{escape(tag)}">{escape(value)}</i>\n'
    integral = all(n == int(n) and "." not in w and "e" not in w.lower() for n, w in zip(numbers, words))
    kind = ' type="int"' if integral else ""
    element = "v" if len(numbers) > 1 else "i"
    text = "".join(f"{int(n):6d}" if integral else f"{n:16.8f}" for n in numbers)
    return f'  <{element}{kind} name="{escape(tag)}">{text}</{element}>\n'


def _structure(name: str | None, lattice: np.ndarray, frac: np.ndarray, indent: int,
               selective: np.ndarray | None = None) -> str:
    pad = " " * indent
    label = f' name="{name}" ' if name else ""
    out = [f"{pad}<structure{label}>\n", f"{pad} <crystal>\n", f'{pad}  <varray name="basis" >\n']
    out += [_v(row, indent + 3) for row in lattice]
    out.append(f"{pad}  </varray>\n")
    out.append(f'{pad}  <i name="volume">{abs(np.linalg.det(lattice)):16.8f} </i>\n')
    out.append(f'{pad}  <varray name="rec_basis" >\n')
    out += [_v(row, indent + 3) for row in np.linalg.inv(lattice).T]
    out.append(f"{pad}  </varray>\n{pad} </crystal>\n")
    out.append(f'{pad} <varray name="positions" >\n')
    out.append(block(frac, "%16.8f%16.8f%16.8f", pad + "  <v>", " </v>\n"))
    out.append(f"{pad} </varray>\n")
    if selective is not None:
        out.append(f'{pad} <varray type="logical" name="selective" >\n')
        out += [pad + "  <v>" + "".join("    T " if f else "    F " for f in row) + " </v>\n" for row in selective]
        out.append(f"{pad} </varray>\n")
    out.append(f"{pad}</structure>\n")
    return "".join(out)


class VasprunWriter:
    def __init__(self, directory: Path, job: Job, version: EmulatedVersion, block_buffered: bool):
        self.file = BlockFile(directory / "vasprun.xml", block_buffered)
        self.job = job
        self._write_header(version)

    def _write_header(self, version: EmulatedVersion) -> None:
        job, s, w = self.job, self.job.structure, self.file.write
        w('<?xml version="1.0" encoding="ISO-8859-1"?>\n<modeling>\n <generator>\n')
        w(_i("program", "vasp", 2, "string"))
        w(_i("version", version.text, 2, "string"))
        w(_i("subversion", "(build Nov 25 2026) complex parallel", 2, "string"))
        w(_i("platform", "LinuxGNU", 2, "string"))
        w(_i("date", time.strftime("%Y %m %d"), 2, "string"))
        w(_i("time", time.strftime("%H:%M:%S"), 2, "string"))
        w(" </generator>\n <incar>\n")
        for tag, value in job.incar.values.items():
            w(_incar_item(tag, value))
        w(" </incar>\n")
        kp = job.kpoints
        w(" <kpoints>\n")
        if kp.divisions is not None:
            w(f'  <generation param="{kp.style}">\n')
            w(_v(kp.divisions, 3, "{:8.0f}", ' type="int" name="divisions"'))
            w(_v(kp.shift, 3, "{:16.8f}", ' name="usershift"'))
            w("  </generation>\n")
        w('  <varray name="kpointlist" >\n')
        w("".join(_v(k, 3) for k in kp.kpoints))
        w('  </varray>\n  <varray name="weights" >\n')
        w("".join(_v([x], 3) for x in kp.weights))
        w("  </varray>\n </kpoints>\n")
        w(" <parameters>\n")
        w('  <separator name="general" >\n')
        w(_i("SYSTEM", job.incar.get_str("SYSTEM", "unknown system"), 3, "string"))
        w(_i("LCOMPAT", False, 3, "logical"))
        w("  </separator>\n")
        w('  <separator name="electronic" >\n')
        w(_i("PREC", "normal", 3, "string"))
        w(_i("ENMAX", float(job.encut), 3))
        w(_i("EDIFF", float(job.scf.ediff), 3))
        w(_i("IALGO", 48 if job.scf.algo == "VeryFast" else 38, 3, "int"))
        w(_i("IWAVPR", job.iwavpr, 3, "int"))
        w(_i("NBANDS", job.scf.nbands, 3, "int"))
        w(_i("NELECT", float(job.nelect), 3))
        w('   <separator name="electronic smearing" >\n')
        w(_i("ISMEAR", job.ismear, 4, "int"))
        w(_i("SIGMA", float(job.sigma), 4))
        w("   </separator>\n")
        w('   <separator name="electronic startup" >\n')
        w(_i("ISTART", job.istart, 4, "int"))
        w(_i("ICHARG", 2 if job.istart == 0 else 0, 4, "int"))
        w("   </separator>\n")
        w('   <separator name="electronic spin" >\n')
        w(_i("ISPIN", job.ispin, 4, "int"))
        w(_i("LNONCOLLINEAR", False, 4, "logical"))
        w(_i("LSORBIT", False, 4, "logical"))
        w("   </separator>\n")
        w('   <separator name="electronic convergence" >\n')
        w(_i("NELM", job.scf.nelm, 4, "int"))
        w(_i("NELMDL", job.scf.nelmdl, 4, "int"))
        w(_i("NELMIN", job.scf.nelmin, 4, "int"))
        w("   </separator>\n")
        w("  </separator>\n")
        w('  <separator name="ionic" >\n')
        w(_i("NSW", job.nsw, 3, "int"))
        w(_i("IBRION", job.ibrion, 3, "int"))
        w(_i("ISIF", job.isif, 3, "int"))
        w(_i("EDIFFG", float(job.ediffg), 3))
        w(_i("POTIM", float(job.potim), 3))
        w("  </separator>\n")
        w('  <separator name="symmetry" >\n')
        w(_i("ISYM", job.incar.get_int("ISYM", 2), 3, "int"))
        w("  </separator>\n")
        w('  <separator name="linear response parameters" >\n')
        w(_i("LEPSILON", False, 3, "logical"))
        w("  </separator>\n")
        w(_i("LCALCPOL", False, 2, "logical"))
        w(" </parameters>\n")
        w(" <atominfo>\n")
        w(f"  <atoms>{s.natoms:8d} </atoms>\n  <types>{len(s.species):8d} </types>\n")
        w('  <array name="atoms" >\n   <dimension dim="1">ion</dimension>\n')
        w('   <field type="string">element</field>\n   <field type="int">atomtype</field>\n   <set>\n')
        for index, (symbol, count) in enumerate(zip(s.species, s.counts), start=1):
            w(f"    <rc><c>{symbol:2s}</c><c>{index:4d}</c></rc>\n" * count)
        w("   </set>\n  </array>\n")
        w('  <array name="atomtypes" >\n   <dimension dim="1">type</dimension>\n')
        w('   <field type="int">atomspertype</field>\n   <field type="string">element</field>\n')
        w("   <field>mass</field>\n   <field>valence</field>\n")
        w('   <field type="string">pseudopotential</field>\n   <set>\n')
        for p, count in zip(job.potcar, s.counts):
            w(f"    <rc><c>{count:4d}</c><c>{p.symbol:2s}</c><c>{p.pomass:16.8f}</c>"
              f"<c>{p.zval:16.8f}</c><c>  {escape(p.titel)}</c></rc>\n")
        w("   </set>\n  </array>\n </atominfo>\n")
        w(_structure("initialpos", s.lattice, s.frac, 1, s.selective))

    def begin_step(self) -> None:
        self.file.write(" <calculation>\n")

    def scf(self, line: ScfLine, seconds: float) -> None:
        w = self.file.write
        w("  <scstep>\n")
        w(f'   <time name="dav">{seconds:8.2f}{seconds:8.2f}</time>\n')
        w(f'   <time name="total">{seconds:8.2f}{seconds:8.2f}</time>\n')
        w("   <energy>\n")
        ts = self.job.smearing_entropy
        w(f'    <i name="eentropy">{-ts:16.8f} </i>\n')
        w(f'    <i name="e_fr_energy">{line.energy:16.8f} </i>\n')
        w(f'    <i name="e_wo_entrp">{line.energy + ts:16.8f} </i>\n')
        w(f'    <i name="e_0_energy">{line.energy + 0.5 * ts:16.8f} </i>\n')
        w("   </energy>\n  </scstep>\n")

    def ionic_step(self, result: IonicResult) -> None:
        w = self.file.write
        w(_structure(None, result.lattice, result.frac, 2))
        w('  <varray name="forces" >\n')
        w(block(result.forces, "%16.8f%16.8f%16.8f", "   <v>", " </v>\n"))
        w("  </varray>\n")
        if result.stress_kb is not None:
            xx, yy, zz, xy, yz, zx = result.stress_kb
            w('  <varray name="stress" >\n')
            w(_v([xx, xy, zx], 3) + _v([xy, yy, yz], 3) + _v([zx, yz, zz], 3))
            w("  </varray>\n")
        w("  <energy>\n")
        w(f'   <i name="e_fr_energy">{result.free_energy:16.8f} </i>\n')
        w(f'   <i name="e_wo_entrp">{result.energy_without_entropy:16.8f} </i>\n')
        w(f'   <i name="e_0_energy">{result.energy_sigma0:16.8f} </i>\n')
        w("  </energy>\n")
        w(f'  <time name="totalsc">{result.seconds:8.2f}{result.seconds:8.2f}</time>\n')
        w(f'  <dos>\n   <i name="efermi">{result.efermi:16.8f} </i>\n  </dos>\n')
        w(" </calculation>\n")

    def finish(self, last: IonicResult | None) -> None:
        if last is not None:
            self.file.write(_structure("finalpos", last.lattice, last.frac, 1))
        self.file.write("</modeling>\n")
        self.file.close()
