"""Campaigns on Dask, NEB with one paused VASP per image, and the ``finetuna`` command line."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from ase.calculators.emt import EMT
from ase.optimize import BFGS
from conftest import MOCK_VASP, mock_processes
from helpers import al_diffusion, write_structures

from finetuna_core.campaign import RelaxSettings, read_summary, run_campaign

FINETUNA = str(Path(sys.executable).parent / "finetuna")


@pytest.mark.slow
def test_campaign_survives_a_crash_and_resumes_without_recomputing(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"  # the temporary directory of this process and its children
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    structures = write_structures(tmp_path / "inputs", 4)
    campaign = tmp_path / "campaign"
    crashing = campaign / "C_Ag" / "parent"
    crashing.mkdir(parents=True)
    (crashing / "mock_vasp.json").write_text(json.dumps({"faults": {"crash_at_step": 6}}))
    settings = RelaxSettings(method="bfgs", parent="mock", vasp_parameters={"kpts": [1, 1, 1]})
    seen = []
    rows = run_campaign(structures, campaign, settings, workers=2, on_result=seen.append)
    assert sorted(r["structure"] for r in seen) == sorted(structures)  # streamed as they finished
    assert rows["C_Ag"]["status"] == "failed" and "ZbrentError" in rows["C_Ag"]["error"]
    assert rows["C_Ag"]["parent_calls"] == 5  # points computed before the crash are on disk
    assert all(rows[name]["status"] == "converged" for name in structures if name != "C_Ag")
    assert set(read_summary(campaign)) == set(structures)
    assert not mock_processes()  # the failed task's VASP was stopped too
    finished = {n: (campaign / n / "result.json").stat().st_mtime for n in structures if n != "C_Ag"}

    (crashing / "mock_vasp.json").unlink()
    rows = run_campaign(structures, campaign, settings, workers=1)
    assert rows["C_Ag"]["status"] == "converged"
    details = json.loads((campaign / "C_Ag" / "result.json").read_text())["details"]
    assert details["extra"]["reused_points"] == 5  # the five DFT points were not recomputed
    assert {n: (campaign / n / "result.json").stat().st_mtime for n in finished} == finished  # skipped
    reference = __import__("ase.io", fromlist=["read"]).read(structures["C_Ag"])
    reference.calc = EMT()
    BFGS(reference, logfile=None).run(fmax=0.03)
    assert float(rows["C_Ag"]["final_energy"]) == pytest.approx(
        reference.get_potential_energy() + 0.5 * 0.05 * len(reference) * 0.2**2, abs=1e-4)
    assert sorted(p.name for p in scratch.iterdir()) == []  # Dask's scratch space went with its cluster


@pytest.mark.slow
def test_learner_campaign_task(tmp_path):
    pytest.importorskip("sevenn")
    structures = write_structures(tmp_path / "inputs", 1)
    settings = RelaxSettings(method="learner", parent="mock", vasp_parameters={"kpts": [1, 1, 1]})
    rows = run_campaign(structures, tmp_path / "campaign", settings, workers=1)
    row = rows["O_Cu"]
    assert row["status"] == "converged" and row["method"] == "learner-default"
    assert (tmp_path / "campaign" / "O_Cu" / "parent.extxyz").is_file()
    assert float(row["fmax"]) < 0.03




@pytest.mark.slow
def test_neb_one_paused_vasp_per_image(tmp_path):
    from finetuna_core.neb import run_neb
    from vasp_interactive import VaspInteractive

    initial, final = al_diffusion()
    reference = run_neb(initial, final, 3, tmp_path / "emt", lambda d: EMT(), fmax=0.05)

    def vasp(directory):
        return VaspInteractive(command=MOCK_VASP, directory=directory, txt=None, xc="PBE", kpts=(1, 1, 1),
                               ismear=0, sigma=0.05)

    result = run_neb(initial, final, 3, tmp_path / "vasp", vasp, fmax=0.05)
    assert result["converged"] and reference["converged"]
    assert result["barrier"] == pytest.approx(reference["barrier"], abs=1e-4)
    assert 0.2 < result["barrier"] < 0.6
    reports = [r for calc in result["calculators"] for r in calc.reports]
    assert reports and all(r.paused and r.verified for r in reports)  # each image waits stopped
    for index in (1, 2, 3):  # one VASP per image, each started once
        assert (tmp_path / "vasp" / f"image-{index}" / "OUTCAR").is_file()
        assert result["calculators"][index - 1].inner.restarts == 0
    assert not mock_processes()


def run_cli(*args, cwd=None, timeout=600):
    return subprocess.run([FINETUNA, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.mark.slow
def test_cli_relax_report_and_errors(tmp_path):
    structures = write_structures(tmp_path, 1)
    done = run_cli("relax", structures["O_Cu"], "--parent", "emt", "--method", "bfgs", "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    assert "status          converged" in done.stdout and "files:" in done.stdout
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["fmax"] < 0.03 and (tmp_path / "r" / "parent.extxyz").is_file()
    done = run_cli("relax", str(tmp_path / "missing.traj"))
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "no such structure file" in done.stderr and "hint:" in done.stderr
    done = run_cli("relax", structures["O_Cu"], "--parent", "nonsense", "--out", str(tmp_path / "bad"))
    assert done.returncode == 1 and "unknown parent" in done.stderr and "Traceback" not in done.stderr
    done = run_cli("relax", structures["O_Cu"], "--parent", "nonsense", "--debug", "--out", str(tmp_path / "bad"))
    assert "Traceback" in done.stderr
    for command in ("relax", "campaign", "report", "demo"):
        helped = run_cli(command, "--help")
        assert helped.returncode == 0 and "usage: finetuna" in helped.stdout
    assert "--max-parent-calls" in run_cli("relax", "--help").stdout
    campaign = run_cli("campaign", str(tmp_path / "O_Cu.traj"), "--parent", "mock", "--method", "bfgs",
                       "--workers", "1", "--out", str(tmp_path / "c"))
    assert campaign.returncode == 0, campaign.stderr
    assert "1 converged, 0 not" in campaign.stdout
    report = run_cli("report", str(tmp_path / "c"))
    assert report.returncode == 0 and (tmp_path / "c" / "accuracy_vs_speed.png").stat().st_size > 1000


def test_relax_settings_are_checked_when_made():
    from finetuna_core.campaign import RelaxSettings

    for bad, why in ((dict(method="lbfgs"), "unknown method"), (dict(query="trust"), "unknown query"),
                     (dict(parent="gaussian"), "unknown parent"), (dict(model="mace"), "unknown model"),
                     (dict(fmax=0.0), "fmax must be > 0")):
        with pytest.raises(ValueError, match=why):
            RelaxSettings(**bad)
    assert RelaxSettings(parent="ase:ase.calculators.emt.EMT", query="k-steps").query == "k-steps"
