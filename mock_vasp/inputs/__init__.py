"""Reading the input files of a run: INCAR, POSCAR, KPOINTS, POTCAR, STOPCAR, and the job they define."""
