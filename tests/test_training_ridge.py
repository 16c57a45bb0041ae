"""The ridge refit (finetuna_core.surrogates.training.ridge) on synthetic linear models: numpy only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from finetuna_core.surrogates.training.ridge import (
    CvScheme,
    LinearForcePoint,
    RidgeSettings,
    bootstrap_deviations,
    fit_ridge,
    point_weights,
    ridge_path,
    train_mae,
)

N_FEATURES = 8


def synthetic_points(
    w_true: np.ndarray, n_points: int, n_free: int, noise: float, seed: int
) -> list[LinearForcePoint]:
    rng = np.random.default_rng(seed)
    points = []
    for _ in range(n_points):
        design = rng.normal(size=(3 * n_free, len(w_true)))
        target = design @ w_true + noise * rng.normal(size=3 * n_free)
        points.append(LinearForcePoint(design=design, target=target))
    return points


PLAIN = RidgeSettings(relative_weighting=False)


def test_noise_free_data_recover_the_true_weights_exactly() -> None:
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=N_FEATURES)
    w_true = w0 + rng.normal(size=N_FEATURES)
    points = synthetic_points(w_true, n_points=4, n_free=5, noise=0.0, seed=1)
    weights = point_weights(points, PLAIN)

    fixed = fit_ridge(points, weights, w0, dataclasses.replace(PLAIN, fixed_lambda=1e-12))
    np.testing.assert_allclose(fixed.weights, w_true, atol=1e-8)
    assert fixed.cv_grid is None and train_mae(points, fixed.weights) < 1e-8

    # cross-validation sees no noise, so it picks the weakest regularisation on the grid
    chosen = fit_ridge(points, weights, w0, PLAIN)
    assert chosen.scheme is CvScheme.LEAVE_ONE_POINT_OUT and chosen.cv_mode == "leave-one-point-out"
    assert chosen.lambda_rel == min(PLAIN.lambda_grid)
    np.testing.assert_allclose(chosen.weights, w_true, atol=1e-4)


def test_data_without_signal_keep_the_pretrained_weights() -> None:
    rng = np.random.default_rng(2)
    w0 = rng.normal(size=N_FEATURES)
    points = synthetic_points(w0, n_points=5, n_free=4, noise=1.0, seed=3)  # truth = w0, all noise
    fit = fit_ridge(points, point_weights(points, PLAIN), w0, PLAIN)
    assert fit.lambda_rel >= 10.0
    assert np.linalg.norm(fit.weights - w0) < 0.1 * np.linalg.norm(w0)


@pytest.mark.parametrize("noise", [0.03, 0.3])
def test_cv_picks_the_order_of_magnitude_of_the_bayes_optimal_strength(noise: float) -> None:
    """With w - w0 ~ N(0, tau^2) and noise sigma, the best strength is c sigma^2 / tau^2."""
    tau, n_free = 1.0, 10
    rng = np.random.default_rng(4)
    w0 = rng.normal(size=N_FEATURES)
    w_true = w0 + tau * rng.normal(size=N_FEATURES)
    points = synthetic_points(w_true, n_points=8, n_free=n_free, noise=noise, seed=5)
    weights = point_weights(points, PLAIN)
    fit = fit_ridge(points, weights, w0, PLAIN)
    optimal = weights[0] * noise**2 / tau**2
    assert abs(np.log10(fit.lambda_abs / optimal)) <= 1.0, (fit.lambda_abs, optimal)


def test_more_noise_means_stronger_regularisation() -> None:
    rng = np.random.default_rng(6)
    w0 = rng.normal(size=N_FEATURES)
    w_true = w0 + 0.3 * rng.normal(size=N_FEATURES)
    chosen = []
    for noise in (0.01, 0.3, 3.0):
        points = synthetic_points(w_true, n_points=6, n_free=6, noise=noise, seed=7)
        chosen.append(fit_ridge(points, point_weights(points, PLAIN), w0, PLAIN).lambda_rel)
    assert chosen[0] < chosen[1] < chosen[2], chosen


def test_one_point_uses_atom_folds_and_a_floor() -> None:
    rng = np.random.default_rng(8)
    w0 = rng.normal(size=N_FEATURES)
    (point,) = synthetic_points(w0 + rng.normal(size=N_FEATURES), n_points=1, n_free=12, noise=0.0, seed=9)
    settings = RidgeSettings()
    fit = fit_ridge([point], point_weights([point], settings), w0, settings)
    assert fit.scheme is CvScheme.ATOM_FOLDS and fit.cv_mode == "5-fold over free atoms"
    assert fit.lambda_rel >= settings.single_point_min_lambda
    assert fit.details()["cv"]["best_rel"] == fit.cv_best_rel

    # one free atom cannot be cross-validated: the pre-trained weights stay
    single = LinearForcePoint(design=point.design[:3], target=point.target[:3])
    kept = fit_ridge([single], np.ones(1), w0, settings)
    assert kept.scheme is CvScheme.NONE and kept.kept_pretrained
    np.testing.assert_array_equal(kept.weights, w0)


def test_bootstrap_spread_shrinks_with_more_data() -> None:
    rng = np.random.default_rng(10)
    w0 = rng.normal(size=N_FEATURES)
    w_true = w0 + 0.5 * rng.normal(size=N_FEATURES)
    spreads = []
    for n_points in (2, 32):
        points = synthetic_points(w_true, n_points=n_points, n_free=6, noise=0.5, seed=11)
        weights = point_weights(points, PLAIN)
        deviations = bootstrap_deviations(points, weights, w0, lam=1e-3, n_members=16, seed=0)
        assert deviations.shape == (16, N_FEATURES)
        np.testing.assert_allclose(deviations.sum(axis=0), 0.0, atol=1e-10)  # ensemble mean = the fit
        spreads.append(float(np.sqrt(np.mean(deviations**2))))
    assert spreads[1] < 0.5 * spreads[0], spreads


def test_relative_weighting_and_recency_decay() -> None:
    big = LinearForcePoint(design=np.ones((3, 2)), target=np.full(3, 2.0))
    small = LinearForcePoint(design=np.ones((3, 2)), target=np.full(3, 0.1))
    relative = point_weights([big, small], RidgeSettings(force_floor=0.05))
    assert relative[1] / relative[0] == pytest.approx((4.0 + 0.0025) / (0.01 + 0.0025))
    decayed = point_weights([big, small], RidgeSettings(relative_weighting=False, recency_decay=0.5))
    np.testing.assert_allclose(decayed, [0.5 / 3, 1 / 3])


def test_ridge_path_solves_each_system_and_zero_at_infinity() -> None:
    rng = np.random.default_rng(12)
    a = rng.normal(size=(6, 4))
    gram, rhs = a.T @ a, rng.normal(size=4)
    lambdas = np.array([1e-3, 1.0, np.inf])
    path = ridge_path(gram, rhs, lambdas)
    for lam, row in zip(lambdas[:2], path[:2]):
        np.testing.assert_allclose((gram + lam * np.eye(4)) @ row, rhs, atol=1e-10)
    np.testing.assert_array_equal(path[2], 0.0)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="do not match"):
        LinearForcePoint(design=np.ones((3, 2)), target=np.ones(4))
    with pytest.raises(ValueError, match="triples"):
        LinearForcePoint(design=np.ones((4, 2)), target=np.ones(4))
    with pytest.raises(ValueError, match="cv_rule"):
        RidgeSettings(cv_rule="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        fit_ridge([], np.ones(0), np.ones(2), PLAIN)


def test_energy_rows_fit_what_the_forces_do_not_see() -> None:
    """Forces that never involve the last feature leave its weight at w0; energy differences that do
    involve it move it to the truth, and with energy_weight 0 the rows are ignored."""
    rng = np.random.default_rng(5)
    w0 = rng.normal(size=N_FEATURES)
    w_true = w0 + rng.normal(size=N_FEATURES)
    points = synthetic_points(w_true, n_points=5, n_free=4, noise=0.0, seed=6)
    for point in points:
        point.design[:, -1] = 0.0
        point.target[:] = point.design @ w_true
    features = [rng.normal(size=N_FEATURES) for _ in points]
    with_energy = [
        dataclasses.replace(point, energy_design=s - features[-1], energy_target=float((s - features[-1]) @ w_true))
        for point, s in zip(points[:-1], features[:-1], strict=True)
    ] + [points[-1]]
    forces_only = fit_ridge(with_energy, point_weights(with_energy, PLAIN), w0, PLAIN)
    assert forces_only.weights[-1] == pytest.approx(w0[-1], abs=1e-9)
    energy = dataclasses.replace(PLAIN, energy_weight=1.0)
    fitted = fit_ridge(with_energy, point_weights(with_energy, energy), w0, energy)
    assert abs(fitted.weights[-1] - w_true[-1]) < 0.05 * abs(w_true[-1] - w0[-1])
    with pytest.raises(ValueError, match="energy row"):
        LinearForcePoint(design=np.ones((3, 2)), target=np.ones(3), energy_design=np.ones(3))
    with pytest.raises(ValueError, match="energy_weight"):
        RidgeSettings(energy_weight=-1.0)
