"""The online learner end to end: EMT and the fake VASP as parents, SevenNet-0 as surrogate,
resume after a parent crash, and the fairchem code path with a locally built checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from conftest import MOCK_VASP

from finetuna_core.learner import OnlineLearner
from finetuna_core.query import make_policy
from finetuna_core.relax import relax, relax_parent_only
from vasp_interactive import VaspInteractive
from vasp_interactive.errors import ZbrentError

pytest.importorskip("sevenn", reason="the SevenNet surrogate needs the 'ml' extra")


def adsorbate_on_slab():
    slab = fcc111("Cu", (3, 3, 3), vacuum=7.0)
    add_adsorbate(slab, "O", 1.4, "fcc")
    slab.positions[-1] += [0.25, 0.1, 0.0]  # off the site, so there is something to relax
    slab.pbc = True
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag >= 2]))
    return slab


@pytest.fixture(scope="module")
def surrogate():
    from finetuna_core.surrogates import make_surrogate

    return make_surrogate("sevennet")


@pytest.mark.slow
def test_relaxation_with_emt_parent(surrogate, tmp_path):
    surrogate.reset()
    baseline = relax_parent_only(adsorbate_on_slab(), EMT(), fmax=0.03)
    learner = OnlineLearner(EMT(), surrogate, make_policy("relax-only", fmax=0.03), directory=str(tmp_path))
    result = relax(adsorbate_on_slab(), learner, fmax=0.03, steps=400)
    assert result.converged and result.fmax < 0.03
    assert learner.records[-1].source == "parent"  # ends on a parent-verified point
    assert result.energy <= baseline.energy + 0.02
    assert result.parent_calls < baseline.parent_calls
    reasons = [r.reason for r in learner.records if r.source == "parent"]
    assert reasons[0].startswith("initial point") and all(r is not None for r in reasons)
    lines = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert len(lines) == len(learner.records) and {"source", "energy", "fmax", "reason"} <= set(lines[0])
    assert (tmp_path / "parent.extxyz").read_text().count("reason") == result.parent_calls


@pytest.mark.slow
def test_relaxation_with_fake_vasp_parent_pauses_it(surrogate, tmp_path):
    surrogate.reset()
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path / "vasp", xc="PBE", kpts=(1, 1, 1), ediff=2e-4) as vasp:
        learner = OnlineLearner(vasp, surrogate, directory=str(tmp_path))
        result = relax(adsorbate_on_slab(), learner, fmax=0.03, steps=400)
        assert vasp.session.paused  # VASP stays stopped while the surrogate works
    assert result.converged
    assert len(learner.pause_reports) == result.parent_calls
    assert all(report.paused and report.verified for report in learner.pause_reports)
    assert result.scf_iterations > 0
    assert result.extra["energy_noise"] == pytest.approx(5 * 2e-4)  # the trust rule's band from this EDIFF
    reference = result.atoms.copy()
    reference.calc = EMT()
    assert result.energy == pytest.approx(reference.get_potential_energy() + 0.5 * 0.05 * len(reference) * 0.04,
                                          abs=1e-5)


@pytest.mark.slow
def test_resume_after_parent_crash_recomputes_nothing(surrogate, tmp_path):
    surrogate.reset()
    (tmp_path / "vasp").mkdir(parents=True)
    (tmp_path / "vasp" / "mock_vasp.json").write_text(json.dumps({"faults": {"crash_at_step": 3}}))
    calls = []
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path / "vasp", xc="PBE", kpts=(1, 1, 1)) as vasp:
        learner = OnlineLearner(vasp, surrogate, make_policy("k-steps", k=3), directory=str(tmp_path))
        with pytest.raises(ZbrentError):
            relax(adsorbate_on_slab(), learner, fmax=0.03, steps=400)
        calls.append(learner.parent_calls)
    assert calls[0] == 2  # two parent points made it to disk before the crash
    (tmp_path / "vasp" / "mock_vasp.json").unlink()
    surrogate.reset()
    with VaspInteractive(command=MOCK_VASP, directory=tmp_path / "vasp", xc="PBE", kpts=(1, 1, 1)) as vasp:
        resumed = OnlineLearner(vasp, surrogate, make_policy("k-steps", k=3), directory=str(tmp_path))
        assert resumed.parent_call_count == 2 and resumed.finetune_reports  # trained on the stored points
        start = resumed.store.points[-1].point.atoms.copy()
        result = relax(start, resumed, fmax=0.03, steps=400)
    assert result.converged
    assert resumed.records[0].source == "stored"  # the last parent point was not recomputed
    new_points = [s.point.atoms.positions for s in resumed.store.points[2:]]
    old_points = [s.point.atoms.positions for s in resumed.store.points[:2]]
    assert all(not np.allclose(new, old) for new in new_points for old in old_points)
    assert resumed.parent_calls == resumed.parent_call_count - 2
    # the step log continues the crashed run's numbering instead of starting again at 1
    numbers = [json.loads(line)["step"] for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert numbers == list(range(1, len(numbers) + 1))


@pytest.mark.slow
def test_uncertainty_policy_uses_the_ensemble(tmp_path):
    from finetuna_core.surrogates import make_surrogate

    ensemble = make_surrogate("sevennet", ensemble_size=4)
    learner = OnlineLearner(EMT(), ensemble, make_policy("uncertainty", threshold=0.02), directory=str(tmp_path))
    result = relax(adsorbate_on_slab(), learner, fmax=0.03, steps=400)
    assert result.converged
    spreads = [r.extra.get("max_spread") for r in learner.records if r.source == "surrogate"]
    assert spreads and all(s is not None and s >= 0 for s in spreads)
    assert any("spread" in (r.reason or "") for r in learner.records) or max(spreads) <= 0.02


def test_fairchem_path_with_a_local_random_checkpoint(tmp_path):
    pytest.importorskip("fairchem.core", reason="fairchem-core is installed by 'make test'")
    from finetuna_core.surrogates import make_surrogate
    from finetuna_core.surrogates.fairchem import FairchemSurrogate, audit_config, build_random_checkpoint

    checkpoint = build_random_checkpoint(tmp_path / "tiny.pt")
    surrogate = make_surrogate("fairchem", checkpoint=str(checkpoint), epochs=20)
    atoms = adsorbate_on_slab()
    before = surrogate.predict(atoms)
    assert before.forces.shape == (len(atoms), 3) and np.isfinite(before.energy)
    learner = OnlineLearner(EMT(), surrogate, make_policy("k-steps", k=2), directory=str(tmp_path / "run"))
    relax(atoms, learner, fmax=0.03, steps=4)
    assert learner.finetune_reports and all(r.method == "paper" for r in learner.finetune_reports)
    last = learner.finetune_reports[-1].details
    assert last["loss_last_epoch"] < last["loss_first_epoch"]
    after = surrogate.predict(adsorbate_on_slab())
    assert np.abs(after.forces - before.forces).max() > 1e-6
    surrogate.save(tmp_path / "state.pt")
    again = FairchemSurrogate.load(tmp_path / "state.pt")
    assert np.allclose(again.predict(adsorbate_on_slab()).forces, after.forces, atol=1e-6)
    surrogate.reset()
    assert np.allclose(surrogate.predict(adsorbate_on_slab()).forces, before.forces, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        make_surrogate("fairchem", checkpoint=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="not a fairchem class"):
        audit_config({"backbone": {"model": "os.system"}})


def test_parent_only_baseline_honours_a_time_cap():
    capped = relax_parent_only(adsorbate_on_slab(), EMT(), fmax=0.03, optimizer="gpmin", max_seconds=0.0)
    assert capped.status == "time-cap" and not capped.converged and capped.parent_calls == 1
    full = relax_parent_only(adsorbate_on_slab(), EMT(), fmax=0.03, optimizer="gpmin")
    assert full.status == "converged" and full.fmax < 0.03 and full.parent_calls > 1
