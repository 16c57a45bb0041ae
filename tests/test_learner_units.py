"""Pieces of the online learner that need no surrogate: query rules, Hessian rebuild, metrics, store."""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.optimize import BFGS
from helpers import co_on_cu

from finetuna_core.learner import constrained
from finetuna_core.metrics import score, score_all
from finetuna_core.query import InitialPoints, KSteps, QueryContext, RelaxOnly, Uncertainty, make_policy
from finetuna_core.relax import rebuild_bfgs_hessian
from finetuna_core.store import RunStore
from finetuna_core.surrogates.base import LabelledPoint


def context(step=5, parent_calls=2, since=3, fmax=0.5, spread=None, natoms=4):
    forces = np.zeros((natoms, 3))
    forces[-1, 0] = fmax
    forces[0, 1] = 9.0  # a fixed atom: never counts
    free = np.ones(natoms, bool)
    free[0] = False
    return QueryContext(step, parent_calls, since, forces, free, spread)


def test_each_rule():
    assert RelaxOnly(0.03).reason(context(fmax=0.02)) is not None
    assert RelaxOnly(0.03).reason(context(fmax=0.031)) is None
    assert RelaxOnly(0.03).reason(context(fmax=0.03)) is not None  # at or below
    assert KSteps(3).reason(context(since=3)) is not None and KSteps(3).reason(context(since=2)) is None
    spread = np.array([5.0, 0.01, 0.02, 0.06])
    assert Uncertainty(0.05).reason(context(spread=spread)) is not None
    spread[-1] = 0.04
    assert Uncertainty(0.05).reason(context(spread=spread)) is None  # the fixed atom's 5.0 is ignored
    assert Uncertainty(0.05).reason(context(spread=None)) is None
    assert InitialPoints(2).reason(context(step=2, parent_calls=1)) is not None
    assert InitialPoints(2).reason(context(step=3, parent_calls=1)) is None


def test_policies_compose_and_always_verify():
    for name in ("relax-only", "k-steps", "uncertainty"):
        policy = make_policy(name, fmax=0.05, k=4, threshold=0.1, initial_points=1)
        assert "verify" in policy.reason(context(fmax=0.01))  # relax-only is in every policy
        assert "initial" in policy.reason(context(step=1, parent_calls=0))
    assert "steps since" in make_policy("k-steps", k=4).reason(context(since=4))
    assert make_policy("relax-only").reason(context(since=50)) is None
    assert "spread" in make_policy("uncertainty", threshold=0.1).reason(context(spread=np.full(4, 0.2)))
    with pytest.raises(ValueError, match="unknown query policy"):
        make_policy("always")


def emt_points(n=4, seed=0):
    atoms = co_on_cu()
    atoms.calc = EMT()
    rng = np.random.default_rng(seed)
    points = []
    for _ in range(n):
        atoms.positions[-3:] += rng.normal(scale=0.05, size=(3, 3))
        forces = atoms.get_forces(apply_constraint=False)
        points.append(LabelledPoint(atoms.copy(), atoms.get_potential_energy(), forces))
    return atoms, points


def test_hessian_rebuild_matches_hand_computed_bfgs():
    atoms, points = emt_points()
    optimizer = BFGS(atoms, logfile=None, alpha=70.0)
    rebuild_bfgs_hessian(optimizer, points)
    hessian = np.eye(3 * len(atoms)) * 70.0
    for previous, current in zip(points, points[1:]):
        dr = (current.atoms.positions - previous.atoms.positions).ravel()
        g1 = -constrained(current.atoms, current.forces).ravel()
        g0 = -constrained(previous.atoms, previous.forces).ravel()
        dg = g1 - g0
        if dr @ dg <= 0:  # the gradient fell along the step: no curvature to learn (BFGS's condition)
            continue
        hdr = hessian @ dr
        hessian = hessian + np.outer(dg, dg) / (dr @ dg) - np.outer(hdr, hdr) / (dr @ hdr)
    assert np.allclose(optimizer.H, hessian)
    assert np.allclose(optimizer.pos0, points[-1].atoms.positions.ravel())
    fixed = points[0].atoms.constraints[0].index
    assert np.allclose(optimizer.forces0.reshape(-1, 3)[fixed], 0.0)  # the optimizer's (constrained) view
    rebuild_bfgs_hessian(optimizer, points[:1])
    assert np.allclose(optimizer.H, np.eye(3 * len(atoms)) * 70.0)  # no curvature from older points


def test_hessian_replay_leaves_out_pairs_whose_forces_rise_along_the_step():
    """A concave pair (or two points apart by noise) must not make the Hessian indefinite."""
    from ase import Atoms

    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 2.0]], cell=[6, 6, 6])
    curvature = -5.0  # E = curvature / 2 * x^2 along x of atom 0: concave, forces rise along +x

    def point(x):
        moved = atoms.copy()
        moved.positions[0, 0] = x
        forces = np.zeros((2, 3))
        forces[0, 0] = -curvature * x
        return LabelledPoint(moved, 0.5 * curvature * x**2, forces)

    points = [point(0.1), point(0.2)]
    plain = BFGS(atoms.copy(), logfile=None, alpha=70.0)
    start = (points[0].atoms.positions.ravel(), points[0].forces.ravel())
    plain.update(*start, *start)  # ASE's first update only sets H = H0
    plain.update(points[1].atoms.positions.ravel(), points[1].forces.ravel(),
                 points[0].atoms.positions.ravel(), points[0].forces.ravel())
    assert np.linalg.eigvalsh(plain.H).min() < 0  # ASE's own update takes the concave pair in
    replayed = BFGS(atoms.copy(), logfile=None, alpha=70.0)
    rebuild_bfgs_hessian(replayed, points)
    assert np.allclose(replayed.H, np.eye(6) * 70.0)
    assert np.allclose(replayed.pos0, points[-1].atoms.positions.ravel())  # still resumes at the newest point


def test_metrics_mean_pooled_and_accuracy():
    runs = {
        "a": {"vasp-cg": {"parent_calls": 100, "energy": -10.0, "fmax": 0.02},
              "learner": {"parent_calls": 10, "energy": -10.01, "fmax": 0.02}},
        "b": {"vasp-cg": {"parent_calls": 20, "energy": -5.0, "fmax": 0.02},
              "learner": {"parent_calls": 10, "energy": -4.97, "fmax": 0.02}},  # 0.03 above: not accurate
        "c": {"vasp-cg": {"parent_calls": 50, "energy": -1.0, "fmax": 0.02},
              "learner": {"parent_calls": 5, "energy": -1.0, "fmax": 0.04}},  # fmax too high
    }
    result = score(runs, "learner")
    assert result.ratio_mean == pytest.approx((0.1 + 0.5 + 0.1) / 3)
    assert result.ratio_pooled == pytest.approx(25 / 170)
    assert result.accuracy == pytest.approx(1 / 3)
    assert result.successes == {"a": True, "b": False, "c": False}
    assert {s.method for s in score_all(runs)} == {"vasp-cg", "learner"}
    # a run stopped by a wall-time cap has a truncated call count: left out and counted apart
    runs["d"] = {"vasp-cg": {"parent_calls": 40, "energy": -2.0, "fmax": 0.02},
                 "learner": {"parent_calls": 3, "energy": -1.0, "fmax": 0.5, "status": "time-cap"}}
    capped = score(runs, "learner")
    assert capped.time_capped == 1 and capped.systems == 3 and "d" not in capped.ratios
    assert capped.ratio_pooled == pytest.approx(25 / 170)


def test_store_round_trip_and_torn_write(tmp_path):
    atoms, points = emt_points(3)
    store = RunStore(tmp_path)
    for k, point in enumerate(points):
        store.add(point, f"reason {k}", seconds_parent=0.5, step=k)
    store.log_step({"step": 1, "source": "parent"})
    with open(tmp_path / "parent.extxyz", "a") as handle:
        handle.write("14\nLattice=\"1 0 0 0 1")  # a crash in the middle of an append
    again = RunStore(tmp_path)
    assert len(again.points) == 3
    assert [p.reason for p in again.points] == ["reason 0", "reason 1", "reason 2"]
    assert np.allclose(again.points[1].point.forces, points[1].forces)
    assert again.points[1].point.energy == pytest.approx(points[1].energy)
    assert again.lookup(points[2].atoms) is again.points[2]
    assert len(again.points[0].point.atoms.constraints) == 1  # FixAtoms survive
    assert again.steps() == [{"step": 1, "source": "parent"}]


def test_a_baseline_that_did_not_converge_is_left_out_of_every_score():
    from finetuna_core.metrics import score

    runs = {
        "good": {"vasp-cg": {"parent_calls": 50, "energy": -1.0, "fmax": 0.02, "status": "converged"},
                 "learner": {"parent_calls": 5, "energy": -1.0, "fmax": 0.02}},
        "diverged": {"vasp-cg": {"parent_calls": 400, "energy": 1000.0, "fmax": 6.4e4, "status": "max-steps"},
                     "learner": {"parent_calls": 5, "energy": 2.0, "fmax": 0.02}},
    }
    result = score(runs, "learner")
    assert result.systems == 1 and result.baseline_capped == ("diverged",)
    assert result.ratio_mean == 0.1 and result.accuracy == 1.0
