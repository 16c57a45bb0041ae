"""The SCF model's properties, fault switches, bad inputs and the MPI mode of the fake VASP."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from ase.io import read
from conftest import MOCK_VASP, run_quiet
from helpers import RawVasp, co_on_cu, write_inputs

INTERACTIVE = dict(interactive=True, ibrion=-1, potim=0.0, nsw=50, isym=0)


def scf_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("DAV:", "RMM:"))]


def single_point(directory, atoms, settings=None, **incar):
    write_inputs(directory, atoms, settings=settings, **incar)
    return run_quiet([MOCK_VASP], cwd=directory, timeout=120)


@pytest.mark.slow
def test_three_starts_order_their_scf_cost(tmp_path):
    """Cold > wavefunction file > in-memory extrapolation, for the same displacement."""
    atoms = co_on_cu()
    cold = single_point(tmp_path / "cold", atoms, istart=0)
    moved = atoms.copy()
    moved.positions[-2:] += [0.0, 0.05, 0.08]
    (tmp_path / "restart").mkdir()
    (tmp_path / "restart" / "WAVECAR").write_bytes((tmp_path / "cold" / "WAVECAR").read_bytes())
    restart = single_point(tmp_path / "restart", moved, istart=1)
    assert " WAVECAR read" in restart.stdout
    write_inputs(tmp_path / "interactive", atoms, **INTERACTIVE)
    raw = RawVasp([MOCK_VASP], tmp_path / "interactive")
    raw.until_prompt()
    raw.send_frac(read(tmp_path / "restart" / "POSCAR").get_scaled_positions())
    interactive = [line for line in raw.until_prompt() if line.startswith("DAV:")]
    raw.process.kill()
    raw.finish()
    n_cold, n_restart, n_memory = len(scf_lines(cold.stdout)), len(scf_lines(restart.stdout)), len(interactive)
    assert n_cold > n_restart > n_memory >= 2
    # same physics whatever the start
    e_restart = float(next(line for line in restart.stdout.splitlines() if " F= " in line).split()[2])
    e_memory = float(next(line for line in raw.lines[::-1] if " F= " in line).split()[2])
    assert e_restart == pytest.approx(e_memory, abs=1e-6)


@pytest.mark.slow
def test_ediff_nelmin_nelmdl_and_nelm(tmp_path):
    atoms = co_on_cu()
    loose = scf_lines(single_point(tmp_path / "loose", atoms, ediff=1e-3, istart=0).stdout)
    tight = scf_lines(single_point(tmp_path / "tight", atoms, ediff=1e-7, istart=0).stdout)
    assert len(tight) > len(loose)
    non_sc = [line for line in loose if len(line.split()) == 7]  # no rms(c) column: density not mixed
    assert len(non_sc) == 5  # default NELMDL = -5 for a cold start
    nelmdl = scf_lines(single_point(tmp_path / "nelmdl", atoms, nelmdl=-8, istart=0).stdout)
    assert len([line for line in nelmdl if len(line.split()) == 7]) == 8
    nelmin = scf_lines(single_point(tmp_path / "nelmin", atoms, nelmin=25, istart=0).stdout)
    assert len(nelmin) == 25
    capped = single_point(tmp_path / "nelm", atoms, nelm=6, ediff=1e-8, istart=0)
    assert len(scf_lines(capped.stdout)) == 6
    assert "electronic self-consistency was not achieved" in capped.stdout
    assert "aborting loop EDIFF was not reached" in (tmp_path / "nelm" / "OUTCAR").read_text()


@pytest.mark.slow
def test_bad_inputs_give_clear_messages(tmp_path):
    atoms = co_on_cu()
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_quiet([MOCK_VASP], cwd=empty, timeout=60)
    assert done.returncode != 0 and "vasp.6.4.2" in done.stdout and "No INCAR found" in done.stdout

    write_inputs(tmp_path / "noposcar", atoms)
    (tmp_path / "noposcar" / "POSCAR").unlink()
    done = run_quiet([MOCK_VASP], cwd=tmp_path / "noposcar", timeout=60)
    assert done.returncode != 0 and "No POSCAR found" in done.stdout

    write_inputs(tmp_path / "badincar", atoms)
    with open(tmp_path / "badincar" / "INCAR", "a") as handle:
        handle.write("ENCUT 400\n")
    done = run_quiet([MOCK_VASP], cwd=tmp_path / "badincar", timeout=60)
    assert done.returncode != 0 and "is not of the form TAG = value" in done.stdout

    xenon = atoms.copy()
    xenon[0].symbol = "Xe"
    done = single_point(tmp_path / "xenon", xenon)
    assert done.returncode != 0 and "cannot treat element(s) Xe" in done.stdout

    write_inputs(tmp_path / "potcar", atoms)
    potcar = (tmp_path / "potcar" / "POTCAR").read_text()
    (tmp_path / "potcar" / "POTCAR").write_text(potcar.split("End of Dataset")[0] + "End of Dataset\n")
    done = run_quiet([MOCK_VASP], cwd=tmp_path / "potcar", timeout=60)
    assert done.returncode != 0 and "number of potentials on File POTCAR incompatible" in done.stdout


def run_with_fault(directory, faults, nsteps=3, timeout=30):
    atoms = co_on_cu()
    write_inputs(directory, atoms, settings={"faults": faults}, **INTERACTIVE)
    raw = RawVasp([MOCK_VASP], directory, timeout=timeout)
    raw.until_prompt()
    frac = read(directory / "POSCAR").get_scaled_positions()
    for _ in range(nsteps - 1):
        frac[-1, 2] += 0.002
        raw.send_frac(frac)
        if raw.until_prompt()[-1] == "<EOF>":
            break
    return raw


@pytest.mark.slow
def test_crash_fault(tmp_path):
    raw = run_with_fault(tmp_path, {"crash_at_step": 2, "crash_error": "zbrent"})
    assert raw.finish() == 1
    assert any("ZBRENT: fatal error in bracketing" in line for line in raw.lines)
    assert sum(line.startswith("DAV:") for line in raw.lines[-4:]) >= 1


@pytest.mark.slow
def test_signal_fault(tmp_path):
    raw = run_with_fault(tmp_path, {"signal_at_step": 2, "signal": "SIGKILL"})
    assert raw.finish() == -signal.SIGKILL


@pytest.mark.slow
def test_hang_fault_is_alive_and_silent(tmp_path):
    raw = run_with_fault(tmp_path, {"hang_at_step": 2}, nsteps=1)
    frac = read(tmp_path / "POSCAR").get_scaled_positions()
    raw.send_frac(frac)
    raw.timeout = 1.5
    got = raw.read_until(lambda line: False)
    assert got[-1] != "<EOF>" and raw.process.poll() is None
    assert sum(line.startswith("DAV:") for line in got) == 1  # one electronic step, then silence
    raw.process.kill()
    raw.finish()


@pytest.mark.slow
@pytest.mark.parametrize("kind, marker", [("noise", "0xDEADBEEF"), ("overflow", "************")])
def test_garbage_fault(tmp_path, kind, marker):
    raw = run_with_fault(tmp_path, {"garbage_at_step": 2, "garbage": kind})
    raw.process.kill()
    raw.finish()
    blocks = [i for i, line in enumerate(raw.lines) if line == "FORCES:"]
    second = raw.lines[blocks[1]: blocks[1] + 16]
    assert any(marker in line for line in second)
    assert not any(marker in line for line in raw.lines[blocks[0]: blocks[0] + 16])


@pytest.mark.slow
def test_no_convergence_and_slow_and_flood(tmp_path):
    raw = run_with_fault(tmp_path / "nelm", {"no_convergence_from_step": 2}, nsteps=2)
    raw.process.kill()
    raw.finish()
    assert any("electronic self-consistency was not achieved" in line for line in raw.lines)
    atoms = co_on_cu()
    write_inputs(tmp_path / "slow", atoms, settings={"faults": {"slow_step_seconds": 1.2}}, **INTERACTIVE)
    started = time.monotonic()
    raw = RawVasp([MOCK_VASP], tmp_path / "slow")
    raw.until_prompt()
    assert time.monotonic() - started > 1.2
    raw.process.kill()
    raw.finish()
    write_inputs(tmp_path / "flood", atoms, settings={"faults": {"stderr_flood_bytes": 2_000_000}}, **INTERACTIVE)
    raw = RawVasp([MOCK_VASP], tmp_path / "flood")
    raw.process.stdin.close()
    stderr = raw.process.stderr.read()  # drained while the fake runs, as a driver must
    assert len(stderr) >= 2_000_000
    raw.stderr = stderr
    assert raw.finish() == 24  # it reached the prompt and met the closed stdin


@pytest.mark.slow
def test_mpi_two_ranks_busy_then_gone(tmp_path, mpirun):
    atoms = co_on_cu((3, 3, 3))
    write_inputs(tmp_path, atoms, settings={"scf_seconds": 0.05}, **INTERACTIVE)
    raw = RawVasp([mpirun, "-np", "2", MOCK_VASP], tmp_path, timeout=120)
    first = raw.until_prompt()
    assert first[-1] == "POSITIONS: reading from stdin"
    launcher = psutil.Process(raw.process.pid)
    ranks = [p for p in launcher.children(recursive=True) if "mock-vasp" in " ".join(p.cmdline())]
    assert len(ranks) == 2
    before = [r.cpu_times().user + r.cpu_times().system for r in ranks]
    frac = read(tmp_path / "POSCAR").get_scaled_positions()
    frac[-1, 2] += 0.002
    raw.send_frac(frac)
    reply = raw.until_prompt()
    after = [r.cpu_times().user + r.cpu_times().system for r in ranks]
    scf = sum(line.startswith("DAV:") for line in reply)
    assert all(b - a > 0.5 * 0.05 * scf for a, b in zip(before, after))  # every rank works each step
    serial = tmp_path / "serial"
    write_inputs(serial, atoms, **INTERACTIVE)
    one = RawVasp([MOCK_VASP], serial)
    serial_first = one.until_prompt()
    one.process.kill()
    one.finish()
    assert [line for line in serial_first if " F= " in line] == [line for line in first if " F= " in line]
    (tmp_path / "STOPCAR").write_text("LABORT = .TRUE.\n")
    raw.send_frac(frac)
    raw.until_prompt()
    raw.send_frac(frac)
    assert raw.finish(60) == 0
    assert not any(psutil.pid_exists(r.pid) and r.status() != psutil.STATUS_ZOMBIE for r in ranks)


@pytest.mark.slow
def test_mpi_crash_takes_all_ranks_down(tmp_path, mpirun):
    atoms = co_on_cu()
    write_inputs(tmp_path, atoms, settings={"faults": {"crash_at_step": 1, "crash_error": "edddav"}}, **INTERACTIVE)
    raw = RawVasp([mpirun, "-np", "2", MOCK_VASP], tmp_path, timeout=120)
    launcher = psutil.Process(raw.process.pid)
    time.sleep(0.5)
    ranks = [p for p in launcher.children(recursive=True)]
    lines = raw.until_prompt()
    assert lines[-1] == "<EOF>" and any("EDDDAV" in line for line in lines)
    assert raw.finish(60) != 0
    gone, alive = psutil.wait_procs(ranks, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_gpaw_backend_runs_real_scf(tmp_path):
    pytest.importorskip("gpaw", reason="GPAW is installed by 'make test' (make gpaw)")
    from ase.build import add_adsorbate, fcc111

    slab = fcc111("Cu", size=(1, 1, 3), vacuum=4.0)
    add_adsorbate(slab, "H", 1.0, "fcc")
    slab.center(vacuum=4.0, axis=2)
    slab.pbc = True
    write_inputs(tmp_path, slab, kpts=(2, 2, 1), settings={"backend": "gpaw"}, **dict(INTERACTIVE, nsw=2))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    raw = RawVasp([MOCK_VASP], tmp_path, timeout=120, env=env)
    first = raw.until_prompt()
    frac = read(tmp_path / "POSCAR").get_scaled_positions()
    frac[-1, 2] += 0.004
    raw.send_frac(frac)
    second = raw.until_prompt()
    assert raw.finish(60) == 0
    cold, memory = scf_lines("\n".join(first)), scf_lines("\n".join(second))
    assert len(cold) > len(memory) > 2
    assert (tmp_path / "WAVECAR.gpw").is_file()
    energies = [float(line.split()[2]) for line in raw.lines if " F= " in line]
    from gpaw import GPAW, PW

    check = read(tmp_path / "CONTCAR")
    check.calc = GPAW(mode=PW(250), xc="PBE", kpts=(2, 2, 1), occupations={"name": "fermi-dirac", "width": 0.1},
                      convergence={"energy": 1e-4, "density": 1e-4}, txt=None)
    assert check.get_potential_energy(force_consistent=True) == pytest.approx(energies[-1], abs=2e-3)
