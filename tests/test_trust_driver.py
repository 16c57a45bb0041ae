"""The trust-region driver on landscapes written down by hand, and its region geometry (pure)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from ase.calculators.emt import EMT
from helpers import AnalyticParent, AnalyticSurrogate, BiasedEMT, co_on_cu, lone_atom

from finetuna_core.correction import CorrectionSettings
from finetuna_core.learner import LearnerSettings, OnlineLearner, largest_move
from finetuna_core.query import make_policy
from finetuna_core.relax import PAPER_DRIVER, SEGMENTS_SETTINGS, relax
from finetuna_core.surrogates.base import free_atom_mask
from finetuna_core.trust_driver import TrustDriverSettings, project_into, region_fmax, solve_segment


def test_projection_moves_only_atoms_beyond_the_radius_onto_the_sphere():
    start = lone_atom(0.0)
    atoms = start.copy()
    atoms.positions[0] = [0.5, 0.0, 0.0]
    atoms.positions[1] += [0.3, 0.0, 0.0]  # fixed: never projected
    project_into(atoms, start, 0.2, free_atom_mask(atoms))
    assert np.allclose(atoms.positions[0], [0.2, 0.0, 0.0])
    assert np.allclose(atoms.positions[1], start.positions[1] + [0.3, 0.0, 0.0])
    inside = start.copy()
    inside.positions[0] = [0.1, 0.05, 0.0]
    before = inside.positions.copy()
    project_into(inside, start, 0.2, free_atom_mask(inside))
    assert np.array_equal(inside.positions, before)


def test_region_forces_drop_only_the_outward_push_at_the_boundary():
    start = lone_atom(0.0)
    free = free_atom_mask(start)
    edge = start.copy()
    edge.positions[0] = [0.2, 0.0, 0.0]
    forces = np.zeros((2, 3))
    forces[0] = [0.5, 0.04, 0.0]  # outward along x, a little sideways
    assert region_fmax(edge, forces, start, 0.2, free) == pytest.approx(0.04)
    forces[0] = [-0.5, 0.0, 0.0]  # inward: the region does not hold it
    assert region_fmax(edge, forces, start, 0.2, free) == pytest.approx(0.5)
    inside = start.copy()
    inside.positions[0] = [0.1, 0.0, 0.0]
    forces[0] = [0.5, 0.0, 0.0]
    assert region_fmax(inside, forces, start, 0.2, free) == pytest.approx(0.5)


def well(centre, depth=2.0):
    centre = np.asarray(centre, dtype=float)
    return lambda positions: depth * float(np.sum((positions[0] - centre) ** 2))


def learner_on(parent_energy, surrogate_energy, **settings):
    return OnlineLearner(AnalyticParent(parent_energy), AnalyticSurrogate(surrogate_energy),
                         settings=replace(SEGMENTS_SETTINGS, **settings))


def test_a_segment_ends_at_the_model_minimum_or_on_the_region_boundary():
    learner = learner_on(well([1.0, 0, 0]), well([1.0, 0, 0]))
    learner.ask_parent(lone_atom(0.0), "initial point")
    settings = TrustDriverSettings()
    far = solve_segment(learner, learner.segment_start, 0.3, 0.03, settings, None)
    assert far.reason == "region boundary"
    assert largest_move(far.atoms, learner.segment_start.atoms) == pytest.approx(0.3, abs=1e-6)
    assert far.atoms.positions[0, 0] == pytest.approx(0.3, abs=1e-3) and far.predicted_drop > 0
    near = solve_segment(learner, learner.segment_start, 2.0, 0.003, settings, None)
    assert near.reason == "model minimum" and near.atoms.positions[0, 0] == pytest.approx(1.0, abs=2e-3)
    assert near.atoms.positions[1] == pytest.approx(learner.segment_start.atoms.positions[1])


def test_a_real_minimum_is_accepted_by_the_probe_without_a_finishing_call():
    learner = learner_on(well([1.0, 0, 0]), well([1.1, 0.05, 0], depth=1.5))
    result = relax(lone_atom(0.0), learner, fmax=0.03, driver="segments")
    assert result.converged and result.fmax < 0.03
    assert result.atoms.positions[0] == pytest.approx([1.0, 0, 0], abs=0.01)
    assert result.extra["guards"]["probe_accepted"] == 1 and result.extra["guards"]["finish_parent_calls"] == 0
    assert result.parent_calls <= 8


def shoulder(positions):
    """A slope of 0.02 eV/A (below fmax) down to a well 0.5 eV deep at x = 3."""
    x, y, z = positions[0]
    return -0.02 * x - 0.5 * np.exp(-((x - 3.0) ** 2) / 0.5) + y * y + z * z


def test_a_shoulder_below_fmax_is_not_taken_for_a_minimum():
    # the paper's relax-only stops where it starts: forces are under fmax on the slope
    paper = OnlineLearner(AnalyticParent(shoulder), AnalyticSurrogate(shoulder), make_policy("relax-only"),
                          settings=LearnerSettings(correction=CorrectionSettings(kind="none"), fit="forces"))
    stopped = relax(lone_atom(0.0), paper, fmax=0.03, guards=PAPER_DRIVER)
    assert stopped.converged and stopped.atoms.positions[0, 0] == pytest.approx(0.0, abs=0.05)
    learner = learner_on(shoulder, shoulder)
    result = relax(lone_atom(0.0), learner, fmax=0.03, driver="segments")
    assert result.converged and result.fmax < 0.03
    assert result.atoms.positions[0, 0] == pytest.approx(3.0, abs=0.1)
    assert result.energy < stopped.energy - 0.4
    assert result.extra["guards"]["probe_declined"] >= 1


def test_the_finish_stops_when_the_parent_denies_the_lower_ground_the_model_sees():
    """Start on a converged point (0.025 eV/A along y) of a stiff parent well, with a surrogate far too
    soft along y: the model promises a few meV beyond the point, the parent goes up there."""
    parent = well([1.0, 0, 0])

    def soft(positions):
        x, y, _ = positions[0]
        return 2.0 * (x - 1.0) ** 2 + 0.05 * y * y

    learner = learner_on(parent, soft)
    start = lone_atom(1.0)
    start.positions[0, 1] = 0.025 / 4.0
    result = relax(start, learner, fmax=0.03, driver="segments")
    assert result.converged and result.parent_calls == 2
    guards = result.extra["guards"]
    assert guards["probe_declined"] == 1 and guards["finish_parent_calls"] == 1 and guards["rejected_uphill"] == 1
    assert np.allclose(result.atoms.positions, start.positions)  # the answer is the converged start
    finishing = learner.records[-1]
    assert finishing.reason.startswith("finish:") and finishing.energy > result.energy


@pytest.mark.slow
def test_every_parent_point_lies_inside_its_segments_region():
    """CO placed 0.9 A off its site and a surrogate that pushes the adsorbate sideways: every segment
    end is within the radius of the start it was solved from (the start after a rejection included)."""
    atoms = co_on_cu()
    atoms.positions[-2:, 0] += 0.9
    learner = OnlineLearner(EMT(), BiasedEMT(np.array([0.3, 0.0, 0.0])), settings=SEGMENTS_SETTINGS)
    starts = []

    def remember(current):
        starts.append(current.segment_start)

    first = learner.segment_start
    result = relax(atoms, learner, fmax=0.05, max_parent_calls=40, on_step=remember, driver="segments")
    assert result.converged and first is None
    points = learner.parent_points
    radii = [r.extra["trust_radius"] for r in learner.records]
    assert len(points) >= 4
    for k in range(1, len(points)):
        start, radius_before = starts[k - 1], radii[k - 1]
        assert largest_move(points[k].atoms, start.atoms) <= radius_before + 1e-6
