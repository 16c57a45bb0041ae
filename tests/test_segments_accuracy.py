"""The segments learner (``learner_setup("segments")``) on real relaxations.

CO on Cu(111) with an EMT parent: the previous-but-one default converged to a flat near-saddle
0.32 eV above where BFGS on the parent ends; the segments driver's finish probe must see through it.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.emt import EMT
from helpers import BiasedEMT, co_on_copper

from finetuna_core.correction import CorrectionSettings
from finetuna_core.learner import LearnerSettings, OnlineLearner
from finetuna_core.relax import learner_setup, relax, relax_parent_only


@pytest.mark.slow
def test_co_on_copper_ends_at_the_bfgs_minimum_in_few_calls():
    pytest.importorskip("sevenn", reason="the SevenNet surrogate needs the 'ml' extra")
    from finetuna_core.surrogates import make_surrogate

    baseline = relax_parent_only(co_on_copper(), EMT(), fmax=0.03)
    setup = learner_setup("segments")
    learner = OnlineLearner(EMT(), make_surrogate("sevennet"), setup.policy, settings=setup.settings)
    result = relax(co_on_copper(), learner, fmax=0.03, driver=setup.driver)
    assert result.converged and result.fmax < 0.03
    assert result.energy <= baseline.energy + 0.02, (result.energy, baseline.energy)
    assert result.parent_calls < baseline.parent_calls / 2
    # the answer is a parent point, and the finish's probe judged it a minimum
    assert learner.point_at(result.atoms) is not None
    assert result.extra["guards"]["probe_accepted"] == 1


def test_uphill_segments_are_rejected_and_never_become_a_segments_start():
    from ase.build import add_adsorbate, fcc111
    from ase.constraints import FixAtoms

    slab = fcc111("Cu", (2, 2, 3), vacuum=7.0)
    add_adsorbate(slab, "O", 1.3, "fcc")
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag >= 2]))
    # the bare biased surrogate (no start match, no GP): its bias keeps pulling the adsorbate uphill
    learner = OnlineLearner(EMT(), BiasedEMT(np.array([0.8, 0.0, 0.0])),
                            settings=LearnerSettings(correction=CorrectionSettings(kind="none"), fit="forces"))
    starts = []
    result = relax(slab, learner, fmax=0.03, max_parent_calls=10, driver="segments",
                   on_step=lambda run: starts.append(run.segment_start))
    assert result.status == "parent-budget"
    assert result.extra["guards"]["rejected_uphill"] >= 1
    records = learner.records
    rejected = {id(p) for p, r in zip(learner.parent_points, records) if r.extra.get("trust_verdict") == "rejected"}
    assert rejected and not any(id(start) in rejected for start in starts)  # never a segment's start
    tolerance = learner.settings.trust_region.uphill_tolerance
    for before, after in zip(starts, starts[1:]):  # a start gives way only to a point no higher (within noise)
        assert after.energy <= before.energy + tolerance
    radii = [r.extra["trust_radius"] for r in records if r.extra.get("trust_verdict") == "rejected"]
    assert min(radii) < learner.settings.trust_region.initial
    assert result.energy == pytest.approx(min(p.energy for p in learner.parent_points))
