"""The model correction (pure): the local GP, the start-force match, and which points join the GP."""

from __future__ import annotations

import numpy as np
import pytest

from finetuna_core.correction import (
    CorrectionSettings,
    GPCheck,
    ModelCorrection,
    ParentValues,
    ResidualGP,
    SurrogateValues,
    near_enough,
)


def bowl(x):
    """A smooth test function (value, gradient) in any dimension."""
    return float(0.5 * x @ x + np.sin(x).sum()), x + np.cos(x)


def test_the_gp_interpolates_values_and_gradients_and_its_gradient_is_consistent():
    rng = np.random.default_rng(3)
    X = 0.3 * rng.normal(size=(6, 4))
    values, gradients = zip(*(bowl(x) for x in X))
    gp = ResidualGP(length=0.8, noise_value=1e-6, noise_gradient=1e-6).fit(X, np.array(values), np.array(gradients))
    for x, value, gradient in zip(X, values, gradients):
        mean, slope = gp.predict(x)
        assert mean == pytest.approx(value, abs=1e-6) and np.allclose(slope, gradient, atol=1e-6)
    x = 0.3 * rng.normal(size=4)
    h = 1e-5
    numerical = [(gp.predict(x + h * e)[0] - gp.predict(x - h * e)[0]) / (2 * h) for e in np.eye(4)]
    assert np.allclose(gp.predict(x)[1], numerical, atol=1e-6)


def test_the_gp_fades_to_zero_far_from_its_points():
    X = np.zeros((1, 3))
    gp = ResidualGP(length=0.5, noise_value=1e-3, noise_gradient=1e-3).fit(X, np.array([0.2]), np.array([[1.0, 0, 0]]))
    value, gradient = gp.predict(np.array([5.0, 0, 0]))
    assert abs(value) < 1e-12 and np.abs(gradient).max() < 1e-12
    with pytest.raises(ValueError, match="do not match"):
        ResidualGP(0.5, 1e-3, 1e-3).fit(X, np.array([0.2, 0.1]), np.zeros((1, 3)))


def points_on(parent, surrogate, positions):
    free = np.array([True, False])
    data = []
    for x in positions:
        r = np.array([x, [0.0, 0.0, 5.0]])
        e, f = parent(r)
        es, fs = surrogate(r)
        data.append((ParentValues(r, e, f), SurrogateValues(es, fs)))
    return free, data


def quadratic(k, centre):
    """Energy and forces of a harmonic well of the first atom (the second never moves)."""
    centre = np.asarray(centre, dtype=float)

    def evaluate(r):
        d = r[0] - centre
        forces = np.zeros_like(r)
        forces[0] = -k * d
        forces[1] = [0.3, 0.0, 0.0]  # a force on the fixed atom: never corrected
        return 0.5 * k * float(d @ d), forces

    return evaluate


def test_the_start_match_makes_the_model_exact_in_forces_at_the_start_and_leaves_fixed_atoms():
    parent, surrogate = quadratic(4.0, [1.0, 0, 0]), quadratic(2.0, [0.8, 0.1, 0])
    free, data = points_on(parent, surrogate, [[0.2, 0.0, 0.0]])
    (start, at_start), = data
    for kind in ("start-match", "local-gp"):
        model = ModelCorrection(CorrectionSettings(kind=kind), free, start, at_start)
        energy, forces = model.apply(start.positions, at_start.energy, at_start.forces)
        assert energy == pytest.approx(at_start.energy)
        assert np.allclose(forces[0], start.forces[0]) and np.allclose(forces[1], at_start.forces[1])
    bare = ModelCorrection(CorrectionSettings(kind="none"), free, start, at_start)
    assert np.allclose(bare.apply(start.positions, at_start.energy, at_start.forces)[1], at_start.forces)


def test_the_local_gp_takes_the_parents_curvature_near_its_points_and_the_match_beyond():
    parent, surrogate = quadratic(4.0, [1.0, 0, 0]), quadratic(1.0, [0.8, 0.1, 0])
    free, data = points_on(parent, surrogate, [[0.2, 0.0, 0.0], [0.35, 0.05, 0.0], [0.3, -0.1, 0.05]])
    (start, at_start), others = data[0], data[1:]
    gp = ModelCorrection(CorrectionSettings(noise_energy=1e-6, noise_force=1e-6), free, start, at_start, others)
    match = ModelCorrection(CorrectionSettings(kind="start-match"), free, start, at_start)
    assert gp.points_in_gp == 3 and match.points_in_gp == 0
    for point, values in others:  # exact at the other parent points, energies relative to the start
        energy, forces = gp.apply(point.positions, values.energy, values.forces)
        assert np.allclose(forces[0], point.forces[0], atol=1e-4)
        assert energy - at_start.energy == pytest.approx(point.energy - start.energy, abs=1e-4)
        assert not np.allclose(match.apply(point.positions, values.energy, values.forces)[1][0], point.forces[0],
                               atol=1e-2)
    far = np.array([[3.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    es, fs = surrogate(far)
    assert np.allclose(gp.apply(far, es, fs)[1], match.apply(far, es, fs)[1], atol=1e-8)


def test_the_model_stays_exact_at_the_start_with_a_noisy_gp_through_other_points():
    """With the default noise the GP alone is not exactly zero at the start (meV/A on real runs); a start
    the parent calls unconverged (fmax 0.032) must not look converged (0.029) to the model."""
    parent, surrogate = quadratic(6.0, [1.0, 0, 0]), quadratic(1.0, [0.5, 0.3, 0])
    free, data = points_on(parent, surrogate, [[0.2, 0.0, 0.0], [0.45, 0.1, 0.0], [0.1, -0.2, 0.1]])
    (start, at_start), others = data[0], data[1:]
    model = ModelCorrection(CorrectionSettings(), free, start, at_start, others)
    x = model.origin[free].ravel()
    assert np.abs(model.gp.predict(x)[1]).max() > 1e-6  # the bare GP is off at the start
    energy, forces = model.apply(start.positions, at_start.energy, at_start.forces)
    assert energy == pytest.approx(at_start.energy, abs=1e-12)
    assert np.allclose(forces[0], start.forces[0], atol=1e-12)


def test_a_checked_gp_is_fitted_always_and_applied_only_when_asked():
    parent, surrogate = quadratic(4.0, [1.0, 0, 0]), quadratic(1.0, [0.8, 0.1, 0])
    free, data = points_on(parent, surrogate, [[0.2, 0.0, 0.0], [0.35, 0.05, 0.0], [0.3, -0.1, 0.05]])
    (start, at_start), others = data[0], data[1:]
    match = ModelCorrection(CorrectionSettings(kind="start-match"), free, start, at_start)
    with_gp = ModelCorrection(CorrectionSettings(kind="local-gp"), free, start, at_start, others)
    off = ModelCorrection(CorrectionSettings(kind="checked-gp"), free, start, at_start, others, use_gp=False)
    on = ModelCorrection(CorrectionSettings(kind="checked-gp"), free, start, at_start, others, use_gp=True)
    x = np.array([[0.5, 0.1, -0.05], [0.0, 0.0, 5.0]])
    es, fs = surrogate(x)
    assert off.points_in_gp == 3 and match.gp_term(x) is None
    assert np.allclose(off.apply(x, es, fs)[1], match.apply(x, es, fs)[1], atol=1e-12)
    assert np.allclose(on.apply(x, es, fs)[1], with_gp.apply(x, es, fs)[1], atol=1e-12)
    term_energy, term_forces = off.gp_term(x)  # what the GP would add, whether applied or not
    assert np.allclose(match.apply(x, es, fs)[1] + term_forces, on.apply(x, es, fs)[1], atol=1e-12)
    assert match.apply(x, es, fs)[0] + term_energy == pytest.approx(on.apply(x, es, fs)[0])
    assert np.abs(term_forces[0]).max() > 0.1 and not term_forces[1].any()  # fixed atoms never corrected


def test_the_gp_check_trusts_the_gp_only_on_its_recent_record():
    check = GPCheck(window=2)
    assert not check.gp_is_better  # no evidence: the match alone
    check.add(match_error=1.0, gp_error=0.5)
    assert check.gp_is_better
    check.add(match_error=0.2, gp_error=0.9)  # last two: GP 1.4, match 1.2
    assert not check.gp_is_better
    check.add(match_error=1.0, gp_error=0.1)  # last two: GP 1.0, match 1.2 (the first point has left the window)
    assert check.gp_is_better


def test_points_join_the_gp_only_near_the_start_and_at_a_similar_force_scale():
    settings = CorrectionSettings(reach=1.0, force_ratio=4.0, force_floor=0.5)
    free = np.array([True, False])
    start = ParentValues(np.zeros((2, 3)), 0.0, np.zeros((2, 3)))

    def other(dx):
        return ParentValues(np.array([[dx, 0, 0], [0, 0, 0]]), 0.0, np.zeros((2, 3)))

    assert near_enough(settings, start, other(0.9), free, start_fmax=0.1, other_fmax=0.3)
    assert not near_enough(settings, start, other(1.1), free, start_fmax=0.1, other_fmax=0.3)
    assert not near_enough(settings, start, other(0.5), free, start_fmax=0.1, other_fmax=0.6)  # floor 0.5 eV/A
    assert near_enough(settings, start, other(0.5), free, start_fmax=2.0, other_fmax=7.9)
    assert not near_enough(settings, start, other(0.5), free, start_fmax=2.0, other_fmax=8.1)  # 4 x the start's


def test_bad_correction_settings_are_refused():
    with pytest.raises(ValueError, match="unknown correction kind"):
        CorrectionSettings(kind="exact")
    with pytest.raises(ValueError, match="must be > 0"):
        CorrectionSettings(length=0.0)
    with pytest.raises(ValueError, match="points >= 2"):
        CorrectionSettings(points=1)
    with pytest.raises(ValueError, match="check_points must be >= 1"):
        CorrectionSettings(kind="checked-gp", check_points=0)
