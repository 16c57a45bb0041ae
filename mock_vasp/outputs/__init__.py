"""The output files VASP writes during a run: OUTCAR, vasprun.xml, OSZICAR."""
