"""VaspInteractive under a real Slurm (one node, started for the test session; see slurm_cluster.py).

Each test asserts on what Slurm itself reports (``squeue -s``) and on the state of the step's tasks,
found from their ``SLURM_JOB_ID``/``SLURM_STEP_ID`` environment, not on the calculator's bookkeeping.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import MOCK_VASP
from helpers import co_on_cu, wait_for

from vasp_interactive import VaspError, VaspInteractive
from vasp_interactive.errors import VaspKilled

pytestmark = pytest.mark.slurm
PARAMS = dict(xc="PBE", kpts=(1, 1, 1), encut=300)


def tasks_of(job: str, step: str | None = None) -> list[psutil.Process]:
    """The fake VASP processes Slurm started for ``job`` (and ``step``), from their environment."""
    found = []
    for process in psutil.process_iter(["name"]):
        try:
            if process.info["name"] != "mock-vasp":
                continue
            env = process.environ()
            if env.get("SLURM_JOB_ID") == job and (step is None or env.get("SLURM_STEP_ID") == step):
                if process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
        except psutil.Error:
            continue
    return found


def cpu_seconds(processes) -> float:
    return sum(p.cpu_times().user + p.cpu_times().system for p in processes)


@pytest.mark.slow
def test_srun_pmix_vasp_paused_resumed_and_stopped(tmp_path, slurm_cluster, slurm_job):
    atoms = co_on_cu()
    with VaspInteractive(command=f"srun -u --mpi=pmix -n 2 {MOCK_VASP}", directory=tmp_path, **PARAMS) as calc:
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        steps = slurm_cluster.steps(slurm_job)
        assert len(steps) == 1  # one step of this allocation: VASP
        step = steps[0].split(".")[1]
        ranks = tasks_of(slurm_job, step)
        assert len(ranks) == 2  # one MPI job of two ranks (PMIx), not two singletons
        assert "running    2 mpi-ranks" in (tmp_path / "vasp.out").read_text()
        with calc.paused() as report:
            assert report.strategy == "slurm" and report.verified and report.ranks_seen == 2
            assert all(p.status() == psutil.STATUS_STOPPED for p in ranks)
            before = cpu_seconds(ranks)
            time.sleep(1.0)
            assert cpu_seconds(ranks) - before < 0.02  # stopped ranks use no CPU
        assert wait_for(lambda: all(p.status() != psutil.STATUS_STOPPED for p in ranks), 5.0)
        atoms.positions[-1, 2] += 0.01
        assert atoms.get_potential_energy() != energy
    assert "writing wavefunctions" in (tmp_path / "vasp.out").read_text()  # the STOPCAR stop
    assert wait_for(lambda: not slurm_cluster.steps(slurm_job), 5.0)
    assert wait_for(lambda: not tasks_of(slurm_job), 5.0)


@pytest.mark.slow
def test_two_calculators_in_one_allocation_pause_only_their_own_step(tmp_path, slurm_cluster, slurm_job):
    first, second = co_on_cu(), co_on_cu()
    command = f"srun -u --exact -n 1 {MOCK_VASP}"  # --exact: each step one CPU, both fit the allocation
    with VaspInteractive(command=command, directory=tmp_path / "a", **PARAMS) as calc_a, \
            VaspInteractive(command=command, directory=tmp_path / "b", **PARAMS) as calc_b:
        first.calc, second.calc = calc_a, calc_b
        first.get_potential_energy()
        second.get_potential_energy()
        assert len(slurm_cluster.steps(slurm_job)) == 2
        with calc_a.paused() as report:
            assert report.strategy == "slurm" and report.verified and report.ranks_seen == 1
            states = {p.cwd(): p.status() for p in tasks_of(slurm_job)}
            assert states[str(tmp_path / "a")] == psutil.STATUS_STOPPED
            assert states[str(tmp_path / "b")] != psutil.STATUS_STOPPED
            second.positions[-1, 2] += 0.01
            second.get_potential_energy()  # the other VASP works while this one is paused
    assert wait_for(lambda: not tasks_of(slurm_job), 5.0)


DRIVER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from helpers import co_on_cu
    from vasp_interactive import VaspInteractive
    atoms = co_on_cu()
    calc = VaspInteractive(command="srun -u --mpi=pmix -n 2 {mock}", directory={run!r}, xc="PBE",
                           kpts=(1, 1, 1), encut=300)
    atoms.calc = calc
    atoms.get_potential_energy()
    if {paused}:
        calc.pause()
    print("READY", flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
def test_sigkill_of_the_driver_cancels_the_step(tmp_path, slurm_cluster, slurm_job, paused):
    script = DRIVER.format(tests=str(Path(__file__).parent), mock=MOCK_VASP, run=str(tmp_path), paused=paused)
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert driver.stdout.readline().strip() == "READY", driver.stderr.read()
        assert len(slurm_cluster.steps(slurm_job)) == 1 and len(tasks_of(slurm_job)) == 2
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        # the watchdog sidecar cancels the step with a real scancel: Slurm reports it gone
        assert wait_for(lambda: not slurm_cluster.steps(slurm_job), 5.0), slurm_cluster.steps(slurm_job)
        assert wait_for(lambda: not tasks_of(slurm_job), 5.0)
    finally:
        if driver.poll() is None:
            driver.kill()


@pytest.mark.slow
def test_a_killed_srun_is_a_clear_error_and_leaves_no_task(tmp_path, slurm_cluster, slurm_job):
    import json

    # every ionic step takes 4 s, so srun dies while VASP computes (killed between two steps, srun's
    # death may be seen before the next step and VASP restarted instead: a race, not this test)
    (tmp_path / "mock_vasp.json").write_text(json.dumps({"faults": {"slow_step_seconds": 4.0}}))
    atoms = co_on_cu()
    with VaspInteractive(command=f"srun -u --mpi=pmix -n 2 {MOCK_VASP}", directory=tmp_path, **PARAMS) as calc:
        atoms.calc = calc
        atoms.get_potential_energy()
        atoms.positions[-1, 2] += 0.01
        outcome: list[BaseException] = []

        def next_step():
            try:
                atoms.get_potential_energy()
            except BaseException as error:  # noqa: BLE001 - handed to the test thread
                outcome.append(error)

        worker = threading.Thread(target=next_step)
        worker.start()
        time.sleep(1.5)
        psutil.Process(calc.session.process.pid).kill()  # srun itself dies mid-step
        worker.join(60)
        assert outcome and isinstance(outcome[0], VaspError)
        failure = outcome[0]
        assert isinstance(failure, VaspKilled) and "killed by SIGKILL during the ionic step" in str(failure)
    assert wait_for(lambda: not slurm_cluster.steps(slurm_job), 10.0)
    assert wait_for(lambda: not tasks_of(slurm_job), 5.0)


@pytest.mark.slow
def test_singletons_under_srun_are_refused(tmp_path, slurm_cluster, slurm_job):
    """Without an MPI plugin srun starts two separate copies: the fake says so instead of printing twice."""
    from helpers import write_inputs

    write_inputs(tmp_path, co_on_cu(), interactive=True, ibrion=-1, nsw=5)
    done = subprocess.run(["srun", "-n", "2", "--mpi=none", MOCK_VASP], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "separate singletons, not one MPI job" in done.stderr
    assert "FORCES:" not in done.stdout


@pytest.mark.slow
def test_neb_with_one_vasp_step_per_image_in_one_allocation(tmp_path, slurm_cluster, slurm_job):
    """Three images, three srun steps in one allocation; an image waiting for the others is paused."""
    from ase.calculators.emt import EMT
    from helpers import al_diffusion

    from finetuna_core.neb import run_neb

    initial, final = al_diffusion()
    reference = run_neb(initial, final, 3, tmp_path / "emt", lambda d: EMT(), fmax=0.05)
    seen_steps = []
    done = threading.Event()

    def watch():  # what Slurm reports while the band relaxes
        while not done.wait(0.5):
            seen_steps.append(len(slurm_cluster.steps(slurm_job)))

    def vasp(directory):
        return VaspInteractive(command=f"srun -u --exact -n 1 {MOCK_VASP}", directory=directory, txt=None,
                               xc="PBE", kpts=(1, 1, 1), ismear=0, sigma=0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = run_neb(initial, final, 3, tmp_path / "vasp", vasp, fmax=0.05)
    finally:
        done.set()
        watcher.join(5)
    assert result["converged"] and result["barrier"] == pytest.approx(reference["barrier"], abs=1e-4)
    reports = [r for calc in result["calculators"] for r in calc.reports]
    assert reports and all(r.paused and r.verified and r.strategy == "slurm" for r in reports)
    assert max(seen_steps) == 5  # one step per image and per end point, all alive at once
    assert wait_for(lambda: not slurm_cluster.steps(slurm_job), 5.0)
    assert wait_for(lambda: not tasks_of(slurm_job), 5.0)


CAMPAIGN_DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from dask_jobqueue import SLURMCluster
    from finetuna_core.campaign import RelaxSettings, run_campaign
    structures = {structures!r}
    cluster = SLURMCluster(cores=1, processes=1, memory="1GB", walltime="00:20:00", python=sys.executable,
                           job_extra_directives=["--ntasks=2"], job_directives_skip=["--mem"],
                           log_directory={logs!r}, local_directory={local!r})
    cluster.scale(jobs=2)
    settings = RelaxSettings(method="bfgs", parent="mock", vasp_parameters={{"kpts": [1, 1, 1]}},
                             parent_settings={{"command": "srun -u --exact --mpi=pmix -n 2 {mock}"}})
    rows = run_campaign(structures, {campaign!r}, settings, cluster=cluster,
                        on_result=lambda row: print("RESULT", row["structure"], row["status"], flush=True))
    cluster.close()
    print("DONE", sum(row["status"] == "converged" for row in rows.values()), flush=True)
""")


@pytest.mark.slow
def test_campaign_on_dask_jobqueue_slurmcluster_survives_a_kill(tmp_path, slurm_cluster, monkeypatch):
    """Workers submitted with sbatch to the real cluster, VASP through srun inside each worker's job;
    one structure fails, the driver is killed mid-way, and the rerun recomputes nothing finished."""
    import json

    pytest.importorskip("dask_jobqueue")
    from helpers import write_structures

    from finetuna_core.campaign import read_summary

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    # the driver's SLURMCluster scheduler keeps its Dask scratch root in TMPDIR: not /tmp's
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    structures = write_structures(tmp_path / "inputs", 4)
    campaign = tmp_path / "campaign"
    crashing = campaign / "C_Ag" / "parent"
    crashing.mkdir(parents=True)
    (crashing / "mock_vasp.json").write_text(json.dumps({"faults": {"crash_at_step": 6}}))
    script = CAMPAIGN_DRIVER.format(tests=str(Path(__file__).parent), structures=structures, mock=MOCK_VASP,
                                    campaign=str(campaign), logs=str(tmp_path / "logs"), local=str(tmp_path / "dask"))

    def workers() -> list[str]:
        done = slurm_cluster.run("squeue", "-h", "-n", "dask-worker", "-o", "%i", check=False)
        return done.stdout.split()

    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    finished = []
    try:
        while len(finished) < 3:  # two workers: C_Ag (the third task) fails fast, O_Ni is still running
            line = driver.stdout.readline()
            assert line, driver.stderr.read()[-2000:]
            if line.startswith("RESULT"):
                finished.append(line.split()[1:])
        assert workers()  # the workers are Slurm jobs
        driver.send_signal(signal.SIGKILL)  # mid-way: three of four structures done
        assert ["C_Ag", "failed"] in finished and "ZbrentError" in (campaign / "C_Ag" / "error.txt").read_text()
        driver.wait(timeout=10)
    finally:
        if driver.poll() is None:
            driver.kill()
    for job in workers():  # what a user does after losing the scheduler: cancel its worker jobs
        slurm_cluster.run("scancel", job, check=False)
    assert wait_for(lambda: not workers(), 30.0)
    assert wait_for(lambda: not [p for p in psutil.process_iter(["name"]) if p.info["name"] == "mock-vasp"
                                 and str(campaign) in (p.cwd() if p.is_running() else "")], 15.0)
    stamps = {name: (campaign / name / "result.json").stat().st_mtime for name, status in finished
              if status == "converged"}

    (crashing / "mock_vasp.json").unlink()
    rerun = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "DONE 4" in rerun.stdout
    rows = read_summary(campaign)
    assert set(rows) == set(structures) and all(row["status"] == "converged" for row in rows.values())
    assert {name: (campaign / name / "result.json").stat().st_mtime for name in stamps} == stamps  # not redone
    recomputed = [line.split()[1] for line in rerun.stdout.splitlines() if line.startswith("RESULT")]
    assert not set(recomputed) & set(stamps) and "C_Ag" in recomputed
    assert wait_for(lambda: not workers(), 90.0)  # the closed cluster's jobs end
