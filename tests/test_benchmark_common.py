"""Benchmark plumbing: a killed benchmark cleans up like an interrupted one; which methods run where."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import tempfile, time
from benchmarks.common import prepare_environment
prepare_environment()
with tempfile.TemporaryDirectory() as run_dir:
    print(run_dir, flush=True)
    time.sleep(60)
"""


def test_sigterm_removes_the_run_directory(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    run_dir = Path(proc.stdout.readline().strip())
    assert run_dir.is_dir()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not run_dir.exists()


def test_the_exact_prior_runs_only_where_the_parent_is_a_sevennet_stand_in_or_emt() -> None:
    from ase.build import add_adsorbate, fcc111
    from ase.calculators.emt import EMT

    from benchmarks.relaxation_methods import EXACT_PRIOR, STAND_IN, applicable, surrogate_for

    emt, other = {"backend": "emt"}, {"backend": "ase:some.other.Calculator"}
    assert applicable(EXACT_PRIOR, STAND_IN) and applicable(EXACT_PRIOR, emt) and not applicable(EXACT_PRIOR, other)
    assert applicable("learner-default", other)
    with pytest.raises(ValueError, match="SevenNet model or EMT"):
        surrogate_for(EXACT_PRIOR, "default", other, {})
    surrogates: dict = {}
    exact = surrogate_for(EXACT_PRIOR, "default", STAND_IN, surrogates)
    assert exact.settings.model == STAND_IN["backend_options"]["model"] == "7net-l3i5"
    assert surrogate_for(EXACT_PRIOR, "default", STAND_IN, surrogates) is exact  # built once
    # on the EMT set the prior is EMT itself, and fine-tuning leaves it as it is
    slab = fcc111("Cu", (2, 2, 2), vacuum=6.0)
    add_adsorbate(slab, "O", 1.5, "fcc")
    frozen = surrogate_for(EXACT_PRIOR, "default", emt, surrogates)
    reference = slab.copy()
    reference.calc = EMT()
    before = frozen.predict(slab)
    assert before.energy == pytest.approx(reference.get_potential_energy())
    assert np.allclose(before.forces, reference.get_forces())
    frozen.fine_tune([])
    assert np.array_equal(frozen.predict(slab).forces, before.forces)


def test_default_rows_from_before_the_split_say_their_rejections_are_mixed() -> None:
    from benchmarks.report import _guards

    old = {"extra": {"guards": {"rejected_uphill": 4, "finish_phase": 1}}}
    assert _guards(old) == {"rejected_uphill_or_not_better": 4, "finish_phase": 1}
    new = {"extra": {"guards": {"rejected_uphill": 4, "rejected_not_better": 2, "finish_phase": 1}}}
    assert _guards(new) == new["extra"]["guards"]


def test_the_paper_learners_are_reported_per_system_with_how_an_unconverged_run_ended() -> None:
    from benchmarks.report import _paper_per_system

    def run(calls, energy, status="converged"):
        return {"parent_calls": calls, "energy": energy, "status": status}

    data = {"runs": {"a": {"vasp-cg": run(40, -1.0), "learner-relax-only": run(5, -0.5, "max-steps"),
                           "learner-k-steps": run(6, -1.001)},
                     "b": {"vasp-cg": {"error": "boom"}, "learner-relax-only": run(3, -2.0)}}}
    lines = "\n".join(_paper_per_system(data)).splitlines()
    table = [line for line in lines if line.startswith("| a ")]
    assert table == ["| a | 40 | 5 | +0.5 (max-steps) | 6 | -0.001 |"]  # no uncertainty column: it never ran
    assert not any(line.startswith("| b ") for line in lines)  # no CG to compare with
    assert _paper_per_system({"runs": {"a": {"vasp-cg": run(40, -1.0)}}}) == []


def test_rescoring_a_results_file_keeps_the_machine_of_its_runs(tmp_path: Path, monkeypatch) -> None:
    import json

    import benchmarks.relaxation_methods as rm

    real = json.loads((ROOT / "benchmarks" / "results" / "relaxation_emt.json").read_text())
    methods = ("vasp-cg", "learner-default")
    runs = {name: {m: by_method[m] for m in methods} for name, by_method in list(real["runs"].items())[:3]}
    recorded = {"platform": "the machine that ran them", "date": "2026-01-01 00:00:00"}
    path = tmp_path / "relaxation_emt.json"
    path.write_text(json.dumps({"machine": recorded, "runs": runs}))
    monkeypatch.setattr(rm, "RESULTS", tmp_path)
    payload = rm.run_set("emt", {}, {"backend": "emt"}, methods, {}, fresh=False, report_only=True)
    assert payload["machine"] == recorded
    assert json.loads(path.read_text())["machine"] == recorded
    assert {row["method"] for row in payload["scores"]} == set(methods)
    assert json.loads(path.read_text())["runs"] == runs


def test_fresh_reruns_the_runs_on_disk_and_a_plain_rerun_skips_them(tmp_path: Path, monkeypatch) -> None:
    """``--fresh`` redoes every system whose rows the results file holds (they used to be taken back from
    the file as if a parallel process had just finished them); without it they are kept and nothing runs."""
    import json

    from ase.build import molecule

    import benchmarks.relaxation_methods as rm

    old = {"method": "bfgs", "status": "converged", "parent_calls": 9, "energy": -1.0, "fmax": 0.01}
    path = tmp_path / "relaxation_emt.json"
    path.write_text(json.dumps({"runs": {"a": {"bfgs": old}, "b": {"bfgs": old}}}))
    monkeypatch.setattr(rm, "RESULTS", tmp_path)
    monkeypatch.setattr(rm, "figures", lambda *args: [])
    ran = []

    def run_method(method, atoms, workdir, settings, surrogates):
        ran.append(method)
        return {**old, "parent_calls": 7}

    monkeypatch.setattr(rm, "run_method", run_method)
    systems = {"a": molecule("H2O"), "b": molecule("NH3")}
    rm.run_set("emt", systems, {"backend": "emt"}, ("bfgs",), {}, fresh=False)
    assert ran == [] and json.loads(path.read_text())["runs"]["b"]["bfgs"]["parent_calls"] == 9
    # the second system too: saving the first takes the file's rows in, the stale ones among them
    rm.run_set("emt", systems, {"backend": "emt"}, ("bfgs",), {}, fresh=True)
    assert ran == ["bfgs", "bfgs"]
    assert {name: row["bfgs"]["parent_calls"] for name, row in json.loads(path.read_text())["runs"].items()} == {
        "a": 7, "b": 7}


def test_the_held_out_set_shares_no_system_with_the_development_set() -> None:
    """The held-out set is built like the generated development set but from another seed: the same
    kind of systems (adsorbate on a four-layer slab, bottom half fixed) and none of the same ones."""
    from benchmarks.relaxation_methods import generated_systems, held_out_systems

    development = generated_systems(20)
    held_out = held_out_systems()
    assert len(held_out) == 20 and not set(held_out) & set(development)
    first_ten = held_out_systems(10)  # the set grew from ten systems: the first ten are the same ones
    assert list(first_ten) == list(held_out)[:10]
    assert all(np.array_equal(first_ten[name].positions, held_out[name].positions) for name in first_ten)
    for atoms in held_out.values():
        fixed = atoms.constraints[0].index
        assert 37 <= len(atoms) <= 60 and 0 < len(fixed) < len(atoms)
    again = held_out_systems()
    assert all(np.array_equal(again[name].positions, atoms.positions) for name, atoms in held_out.items())
    # no position is shared either: a renamed copy of a development system would not count as held out
    development_positions = {atoms.positions.round(6).tobytes() for atoms in development.values()}
    assert not any(atoms.positions.round(6).tobytes() in development_positions for atoms in held_out.values())
