"""OUTCAR in the layout ASE's ``vasp-out`` reader and pymatgen's ``Outcar`` parse."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..config import EmulatedVersion
from ..fortran import block, fits, fortran_e, fortran_f
from ..inputs.job import Job
from ..physics.scf import ScfLine
from .outfiles import BlockFile, IonicResult

RULE = "-" * 104
SHORT_RULE = " " + "-" * 51


def _lattice_block(lattice: np.ndarray) -> str:
    reciprocal = np.linalg.inv(lattice).T
    rows = [
        "      direct lattice vectors                 reciprocal lattice vectors",
        *(
            "   " + "".join(f"{x:13.9f}" for x in a) + "  " + "".join(f"{x:13.9f}" for x in b)
            for a, b in zip(lattice, reciprocal)
        ),
        "",
        "  length of vectors",
        "   " + "".join(f"{x:13.9f}" for x in np.linalg.norm(lattice, axis=1)) + "  "
        + "".join(f"{x:13.9f}" for x in np.linalg.norm(reciprocal, axis=1)),
    ]
    return "\n".join(rows) + "\n"


def _stress_rows(title: str, total_label: str, total: np.ndarray, kb: np.ndarray) -> str:
    """The stress table's head: title, direction labels, rule, total (eV) and 'in kB' rows."""
    return (title + "\n" + "  Direction    XX          YY          ZZ          XY          YZ          ZX\n"
            + "  " + "-" * 86 + "\n" + total_label + "".join(f"{x:12.5f}" for x in total) + "\n"
            + "  in kB   " + "".join(f"{x:12.5f}" for x in kb) + "\n")


def _force_table(header: str, cartesian: np.ndarray, forces: np.ndarray) -> str:
    """The POSITION / TOTAL-FORCE table with its rules and the total drift."""
    rule = " " + "-" * 83 + "\n"
    drift = forces.sum(axis=0)
    if fits(cartesian, 13, 5) and fits(forces, 14, 6):
        rows = block(np.hstack([cartesian, forces]), "%13.5f%13.5f%13.5f   %14.6f%14.6f%14.6f")
    else:  # a force too large for F14.6 prints as asterisks, as VASP's does
        rows = "".join("".join(fortran_f(x, 13, 5) for x in position) + "   "
                       + "".join(fortran_f(f, 14, 6) for f in force) + "\n"
                       for position, force in zip(cartesian, forces))
    return ("\n\n" + header + "\n" + rule + rows + rule
            + "    total drift:                         " + "".join(fortran_f(x, 14, 6) for x in drift) + "\n\n\n")


class OutcarWriter:
    def __init__(self, directory: Path, job: Job, version: EmulatedVersion, ranks: int,
                 block_buffered: bool):
        self.file = BlockFile(directory / "OUTCAR", block_buffered)
        self.job = job
        self.version = version
        self.ranks = ranks
        self._write_header()

    def _write_header(self) -> None:
        job, s = self.job, self.job.structure
        w = self.file.write
        now = time.strftime("%Y.%m.%d  %H:%M:%S")
        w(f"{self.version.header()}\n executed on             LinuxGNU date {now}\n")
        w(f" running on {self.ranks:4d} total cores\n")
        w(f" distrk:  each k-point on {self.ranks:4d} cores,    1 groups\n")
        w(f" distr:  one band on NCORES_PER_BAND=   1 cores, {self.ranks:4d} groups\n\n\n{RULE}\n\n\n")
        w(" INCAR:\n")
        for p in job.potcar:
            w(f" POTCAR:    {p.titel}\n")
        w("\n")
        for p in job.potcar:
            w(f" POTCAR:    {p.titel}\n")
            w(f"   VRHFIN ={p.symbol}: mock-vasp dataset\n   LEXCH  = PE\n\n")
            w(f"   TITEL  = {p.titel}\n")
            w(f"   POMASS = {p.pomass:8.3f}; ZVAL   = {p.zval:8.3f}    mass and valenz\n")
            w(f"   ENMAX  = {p.enmax:8.3f}; ENMIN  = {0.75 * p.enmax:8.3f} eV\n\n")
        w(f" POSCAR: {s.comment}\n  positions in direct lattice\n  No initial velocities read in\n\n\n")
        w(f"{RULE}\n\n\n ion  position               nearest neighbor table\n")
        for k, row in enumerate(s.frac, start=1):
            w(f" {k:4d}" + "".join(f"{x:7.3f}" for x in row) + "-\n")
        w("\n")
        if job.incar.get_int("ISYM", 2) <= 0:
            w("IMPORTANT INFORMATION: All symmetrisations will be switched off!\n")
            w("NOSYMM: (Re-)initialisation of all symmetry stuff for point group C_1.\n\n")
        kp = job.kpoints
        w(f" KPOINTS: {kp.comment}\n\n Found {len(kp.weights):6d} irreducible k-points:\n\n")
        w(" Following reciprocal coordinates:\n            Coordinates               Weight\n")
        for k, weight in zip(kp.kpoints, kp.weights):
            w("".join(f"{x:10.6f}" for x in k) + f"{weight * len(kp.weights):14.6f}\n")
        w(f"\n\n{RULE}\n\n\n\n")
        nkpts, nbands = len(kp.weights), job.scf.nbands
        w(" Dimension of arrays:\n")
        w(f"   k-points           NKPTS = {nkpts:6d}   k-points in BZ     NKDIM = {nkpts:6d}"
          f"   number of bands    NBANDS= {nbands:6d}\n")
        w(f"   number of dos      NEDOS =    301   number of ions     NIONS = {s.natoms:6d}\n")
        w(f"   total plane-waves  NPLWV = {job.nplwv:6d}\n")
        w("   dimension x,y,z NGX = {:5d} NGY = {:5d} NGZ = {:5d}\n".format(*job.ngrid))
        w("   ions per type =          " + "".join(f"{n:4d}" for n in s.counts) + "\n\n")
        w(f" SYSTEM =  {job.incar.get_str('SYSTEM', 'unknown system')}\n POSCAR =  {s.comment}\n\n")
        self._write_parameters()
        if job.interactive:
            w(f"\n\n{RULE}\n\n\n interactive mode, write forces and read positions\n")
        w(f"\n\n{RULE}\n\n\n")
        w(f"  energy-cutoff  :  {job.encut:10.2f}\n  volume of cell :  {abs(np.linalg.det(s.lattice)):10.2f}\n")
        w(_lattice_block(s.lattice))
        w(f"\n\n \n k-points in units of 2pi/SCALE and weight: {kp.comment}\n")
        cart = kp.kpoints @ np.linalg.inv(s.lattice).T
        for k, weight in zip(cart, kp.weights):
            w("  " + "".join(f"{x:12.8f}" for x in k) + f"{weight:12.3f}\n")
        w(f" \n k-points in reciprocal lattice and weights: {kp.comment}\n")
        for k, weight in zip(kp.kpoints, kp.weights):
            w("  " + "".join(f"{x:12.8f}" for x in k) + f"{weight:12.3f}\n")
        w(" \n position of ions in fractional coordinates (direct lattice) \n")
        for row in s.frac:
            w("  " + "".join(f"{x:12.8f}" for x in row) + "\n")
        w(" \n position of ions in cartesian coordinates  (Angst):\n")
        for row in s.cartesian:
            w("  " + "".join(f"{x:12.8f}" for x in row) + "\n")
        w(" \n\n\n" + RULE + "\n\n\n")
        waves = max(1, job.nplwv // 8)
        for n, k in enumerate(kp.kpoints, start=1):
            w(f" k-point {n:3d} :  " + " ".join(f"{x:6.4f}" for x in k) + f"  plane waves: {waves:6d}\n")
        w(f"\n maximum and minimum number of plane-waves per node : {waves:9d} {waves:8d}\n\n")
        w(f" maximum number of plane-waves: {waves:9d}\n\n\n")
        w(f" total amount of memory used by VASP MPI-rank0 {30000 + job.nplwv // 10:10d}. kBytes\n")
        w("=" * 71 + "\n\n")

    def _write_parameters(self) -> None:
        job, w = self.job, self.file.write
        w(" Startparameter for this run:\n")
        w("   NWRITE =      2    write-flag & timer\n   PREC   = normal    normal or accurate\n")
        w(f"   ISTART = {job.istart:6d}    job   : 0-new  1-cont  2-samecut\n")
        w(f"   ICHARG = {2 if job.istart == 0 else 0:6d}    charge: 1-file 2-atom 10-const\n")
        w(f"   ISPIN  = {job.ispin:6d}    spin polarized calculation?\n")
        w("   LNONCOLLINEAR =      F non collinear calculations\n   LSORBIT =      F    spin-orbit coupling\n\n")
        w(" Electronic Relaxation 1\n")
        w(f"   ENCUT  = {job.encut:6.1f} eV\n")
        w(f"   NELM   = {job.scf.nelm:5d};   NELMIN={job.scf.nelmin:3d}; NELMDL={job.scf.nelmdl:3d}"
          "     # of ELM steps \n")
        w(f"   EDIFF  = {job.scf.ediff:7.1E}   stopping-criterion for ELM\n")
        w(" Ionic relaxation\n")
        w(f"   EDIFFG = {job.ediffg:7.1E}   stopping-criterion for IOM\n")
        w(f"   NSW    = {job.nsw:6d}    number of steps for IOM\n")
        w(f"   IBRION = {job.ibrion:6d}    ionic relax: 0-MD 1-quasi-New 2-CG\n")
        w(f"   ISIF   = {job.isif:6d}    stress and relaxation\n")
        w(f"   IWAVPR = {job.iwavpr:6d}    prediction:  0-non 1-charg 2-wave 3-comb\n")
        w(f"   ISYM   = {job.incar.get_int('ISYM', 2):6d}    0-nonsym 1-usesym 2-fastsym\n")
        w(f"   POTIM  = {job.potim:6.4f}    time-step for ionic-motion\n\n")
        w(f"   NELECT = {job.nelect:12.4f}    total number of electrons\n\n")
        w(" DOS related values:\n")
        w(f"   ISMEAR = {job.ismear:5d};   SIGMA  = {job.sigma:6.2f}  broadening in eV -4-tet -1-fermi 0-gaus\n\n")
        w(" Electronic relaxation 2 (details)\n")
        w(f"   IALGO  = {48 if job.scf.algo == 'VeryFast' else 38:6d}    algorithm\n")
        w("   IMIX   =      4    mixing-type and parameters\n")
        w(f"     AMIX     = {job.scf.amix:6.2f};   BMIX     =   1.00\n\n")
        w(" Write flags\n")
        w(f"   LWAVE        =      {'T' if job.lwave else 'F'}    write WAVECAR\n")

    def scf_iteration(self, ionic_step: int, line: ScfLine, seconds: float) -> None:
        w = self.file.write
        w(f"\n\n{'-' * 39} Iteration {ionic_step:6d}({line.index:4d})  {'-' * 39}\n\n\n")
        w(f"      LOOP:  cpu time {seconds:9.4f}: real time {seconds:9.4f}\n\n")
        w(f" eigenvalue-minimisations  : {line.ncg:5d}\n")
        w(f" total energy-change (2. order) :{fortran_e(line.de, 14, 7)}  ({fortran_e(line.deps, 14, 7)})\n")
        electrons = self.job.nelect
        w(f" number of electron {electrons:15.7f} magnetization \n")
        w(f" augmentation part  {electrons:15.7f} magnetization \n\n")
        w(" Free energy of the ion-electron system (eV)\n" + "  " + "-" * 51 + "\n")
        ts = self.job.smearing_entropy
        w(f"  entropy T*S    EENTRO = {-ts:18.8f}\n")
        w(f"  eigenvalues    EBANDS = {line.energy * 1.6:18.8f}\n")
        w("  " + "-" * 51 + "\n")
        w(f"  free energy    TOTEN  = {line.energy:18.8f} eV\n\n")
        w(f"  energy without entropy = {line.energy + ts:17.8f}"
          f"  energy(sigma->0) = {line.energy + 0.5 * ts:17.8f}\n\n\n")
        w(RULE + "\n")

    def ionic_step(self, result: IonicResult, aborted: str | None = None) -> None:
        w = self.file.write
        w("\n\n\n\n")
        if aborted:
            w(f" {aborted}\n\n")
        w(f" E-fermi : {result.efermi:8.4f}     XC(G=0):  -0.7871     alpha+bet : -0.1079\n\n\n")
        if result.converged:
            w(f"{'-' * 24} aborting loop because EDIFF is reached {'-' * 40}\n\n\n")
        else:
            w(f"{'-' * 24} aborting loop EDIFF was not reached (unconverged)  {'-' * 28}\n\n\n")
        if result.stress_kb is not None:
            kb = result.stress_kb
            total = kb * result.volume / 1602.1766208
            w(_stress_rows("  FORCE on cell =-STRESS in cart. coord.  units (eV):", "  Total   ", total, kb))
            w(f"  external pressure = {float(np.mean(kb[:3])):11.2f} kB  Pullay stress =        0.00 kB\n\n\n")
        w(" VOLUME and BASIS-vectors are now :\n " + "-" * 77 + "\n")
        w(f"  energy-cutoff  :  {self.job.encut:10.2f}\n  volume of cell :  {result.volume:10.2f}\n")
        w(_lattice_block(result.lattice))
        w(_force_table(" POSITION                                       TOTAL-FORCE (eV/Angst)",
                       result.cartesian, result.forces))
        w(RULE + "\n\n\n\n")
        w("  FREE ENERGIE OF THE ION-ELECTRON SYSTEM (eV)\n" + SHORT_RULE + "\n")
        w(f"  free  energy   TOTEN  = {result.free_energy:18.8f} eV\n\n")
        w(f"  energy  without entropy= {result.energy_without_entropy:17.8f}"
          f"  energy(sigma->0) = {result.energy_sigma0:17.8f}\n \n\n\n")
        w(RULE + "\n\n\n")
        w(f"     LOOP+:  cpu time {result.seconds:9.4f}: real time {result.seconds:9.4f}\n")

    def ionic_header(self, step: int) -> None:
        """The ``Ionic step`` rule VASP prints with its force field on."""
        self.file.write(f"\n\n{'-' * 39} Ionic step {step:8d}  {'-' * 43}\n\n\n")

    def ml_block(self, cartesian: np.ndarray, lattice: np.ndarray, energy: float, forces: np.ndarray,
                 stress_kb: np.ndarray | None, seconds: float) -> None:
        """The force field's prediction for one structure, as VASP 6.3 prints it (fixtures mlff/)."""
        w = self.file.write
        kb = np.zeros(6) if stress_kb is None else np.asarray(stress_kb)
        volume = float(abs(np.linalg.det(lattice)))
        total = kb * volume / 1602.1766208
        pressure = float(np.mean(kb[:3]))
        title = "  ML FORCE on cell =-STRESS in cart. coord. units (eV/cell)"
        w("\n\n\n" + _stress_rows(title, "  Total:  ", total, kb))
        w(f"  external pressure = {pressure:11.2f} kB  Pullay stress =        0.00 kB\n\n")
        w("  kinetic pressure (ideal gas correction) =      0.00 kB\n")
        w(f"  total pressure  = {pressure:9.2f} kB\n")
        w("  Total+kin. " + "".join(f"{x:12.3f}" for x in kb) + "\n")
        w(f"  volume of cell :  {volume:10.2f}\n")
        w(_lattice_block(lattice))
        header = "  POSITION                                       TOTAL-FORCE (eV/Angst) (ML)"
        w(_force_table(header, cartesian, forces))
        w(RULE + "\n\n\n\n")
        w("  ML FREE ENERGIE OF THE ION-ELECTRON SYSTEM (eV)\n" + SHORT_RULE + "\n")
        w(f"  free  energy ML TOTEN  = {energy:18.8f} eV\n\n")
        w(f"  ML energy  without entropy= {energy:17.8f}  ML energy(sigma->0) = {energy:17.8f}\n\n")
        w(f"      MLFF:  cpu time {seconds:9.4f}: real time {seconds:9.4f}\n")

    def message(self, text: str) -> None:
        self.file.write(f" {text}\n")

    def finish(self, seconds: float) -> None:
        w = self.file.write
        w("\n\n General timing and accounting informations for this job:\n")
        w(" ========================================================\n\n")
        w(f"                  Total CPU time used (sec): {seconds:15.3f}\n")
        w(f"                            User time (sec): {seconds:15.3f}\n")
        w(f"                          System time (sec): {0.0:15.3f}\n")
        w(f"                         Elapsed time (sec): {seconds:15.3f}\n\n")
        w(f"                   Maximum memory used (kb): {40000.0:15.0f}.\n")
        w(f"                   Average memory used (kb): {'N/A':>15s}\n\n")
        w(f"                          Minor page faults: {1000:15d}\n")
        w(f"                          Major page faults: {0:15d}\n")
        w(f"                 Voluntary context switches: {100:15d}\n")
        self.file.close()
