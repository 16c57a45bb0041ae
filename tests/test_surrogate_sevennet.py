"""Tests of the SevenNet-0 surrogate (finetuna_core.surrogates.sevennet) on the real model.

Real-data tests use one small OC20 system (random1447590, 17 atoms, 7 free) from
``../shared/benchmarks/oc20_finetuna`` and skip when that folder is absent.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.constraints import FixAtoms

pytest.importorskip("torch")
pytest.importorskip("sevenn")

import torch  # noqa: E402

from finetuna_core.surrogates import (  # noqa: E402
    LabelledPoint,
    available_surrogates,
    free_atom_mask,
    make_surrogate,
)
from finetuna_core.surrogates.sevennet import SevenNetSurrogate  # noqa: E402
from finetuna_core.surrogates.sevennet.jacobian import LinearisationCheck  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TRAJ = SHARED / "benchmarks" / "oc20_finetuna" / "random1447590.traj"
HEAD_KEYS = ("reduce_input_to_hidden.linear.weight", "reduce_hidden_to_energy.linear.weight")


@pytest.fixture(scope="module")
def frames() -> list[Atoms]:
    if not TRAJ.is_file():
        pytest.skip(f"needs the shared OC20 trajectories: {TRAJ} is absent")
    import ase.io

    return ase.io.read(TRAJ, ":")


@pytest.fixture(scope="module")
def split(frames: list[Atoms]) -> tuple[list[LabelledPoint], list[Atoms]]:
    """3 training points (first, middle, last before the test window) and the last 20%."""
    n = len(frames)
    n_pool = n - max(1, round(0.2 * n))
    idx = np.linspace(0, n_pool - 1, 3).round().astype(int)
    points = [LabelledPoint.from_atoms(frames[i]) for i in idx]
    return points, frames[n_pool:]


@pytest.fixture(scope="module")
def _model() -> SevenNetSurrogate:
    torch.manual_seed(0)
    return SevenNetSurrogate()


@pytest.fixture()
def model(_model: SevenNetSurrogate) -> SevenNetSurrogate:
    """The shared single-head surrogate, reset before and after each test."""
    _model.reset()
    yield _model
    _model.reset()


def _free_mae(model: SevenNetSurrogate, test: list[Atoms]) -> float:
    errors = []
    for atoms in test:
        free = free_atom_mask(atoms)
        ref = atoms.get_forces(apply_constraint=False)
        errors.append(np.abs(model.predict(atoms).forces[free] - ref[free]).mean())
    return float(np.mean(errors))


def _model_own_forces(model: SevenNetSurrogate, atoms: Atoms) -> tuple[float, np.ndarray]:
    """Energy and forces from the sevenn model's own forward (its force_output module)."""
    import sevenn._keys as KEY
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.train.dataload import unlabeled_atoms_to_graph

    data = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, model.cutoff))
    out = model.network.module(data)
    return float(out[KEY.PRED_TOTAL_ENERGY].detach()), out[KEY.PRED_FORCE].detach().numpy()


@pytest.mark.slow
@pytest.mark.shared
def test_linear_head_identity(model: SevenNetSurrogate, frames: list[Atoms]) -> None:
    atoms = frames[0]
    free = np.flatnonzero(free_atom_mask(atoms))
    energy, own = _model_own_forces(model, atoms)
    pred = model.predict(atoms)
    assert pred.energy == pytest.approx(energy, abs=1e-4)
    np.testing.assert_allclose(pred.forces, own, atol=1e-5)

    jac = model.jacobian(atoms)
    assert jac.shape == (128, 3 * len(free))
    linear = -(jac.T @ model.effective_head()).reshape(-1, 3)
    np.testing.assert_allclose(linear, own[free], atol=1e-4)
    assert np.abs(own[free]).max() > 0.05  # non-trivial forces were compared

    # every Jacobian mode is exact: sparse (default) = plain forward mode = reverse mode
    scale = 1e-5 * max(1.0, np.abs(jac).max())
    for mode in ("forward", "reverse"):
        np.testing.assert_allclose(model.jacobian(atoms, mode=mode), jac, atol=scale)


@pytest.mark.slow
def test_jacobian_modes_agree_on_dense_slab(model: SevenNetSurrogate) -> None:
    """Sparse vs plain forward-mode J, and the linear identity, on a dense Cu(111) + O slab."""
    from ase.build import add_adsorbate, fcc111

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.2, "fcc")
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag == 3]))
    slab.rattle(0.05, seed=1)
    free = free_atom_mask(slab)
    sparse = model.jacobian(slab, mode="sparse")
    forward = model.jacobian(slab, mode="forward")
    assert sparse.shape == (128, 3 * int(free.sum()))
    np.testing.assert_allclose(sparse, forward, atol=1e-5 * np.abs(forward).max())
    # without room for the pair matrices, the sparse mode sends node tangents through e3nn
    small = SevenNetSurrogate(jacobian_memory_mb=0.001)
    np.testing.assert_allclose(small.jacobian(slab, mode="sparse"), forward, atol=1e-5 * np.abs(forward).max())
    checks = small.jacobians.linearisation_checks
    assert checks and set(checks.values()) == {LinearisationCheck.EDGES}
    # the pair matrices are checked when they are first built, even after an edges-only check
    small.update_settings(jacobian_memory_mb=512.0)
    moved = slab.copy()
    moved.rattle(0.02, seed=2)  # a new structure: not answered from the cache
    np.testing.assert_allclose(
        small.jacobian(moved, mode="sparse"), model.jacobian(moved, mode="forward"), atol=1e-5 * np.abs(forward).max()
    )
    assert set(small.jacobians.linearisation_checks.values()) == {LinearisationCheck.ALL}
    forces = -(sparse.T @ model.effective_head()).reshape(-1, 3)
    np.testing.assert_allclose(forces, model.predict(slab).forces[free], atol=1e-4)


@pytest.mark.slow
def test_every_jacobian_engine_agrees_on_a_small_molecule(model: SevenNetSurrogate) -> None:
    """reverse_loop (128 separate backward passes) gives the J of the forward-mode engines."""
    from ase.build import molecule

    atoms = molecule("CH3OH")
    atoms.rattle(0.05, seed=3)
    atoms.set_constraint(FixAtoms(indices=[0]))
    free = free_atom_mask(atoms)
    reference = model.jacobian(atoms, mode="reverse_loop")
    assert reference.shape == (128, 3 * int(free.sum()))
    atol = 1e-5 * np.abs(reference).max()
    for mode in ("forward", "sparse"):
        np.testing.assert_allclose(model.jacobian(atoms, mode=mode), reference, atol=atol, err_msg=mode)
    forces = -(reference.T @ model.effective_head()).reshape(-1, 3)
    np.testing.assert_allclose(forces, model.predict(atoms).forces[free], atol=1e-4)


@pytest.mark.slow
@pytest.mark.shared
def test_ridge_finetune_lowers_holdout_error(model: SevenNetSurrogate, split) -> None:
    points, test = split
    before = _free_mae(model, test)
    report = model.fine_tune(points)
    after = _free_mae(model, test)
    assert report.method == "ridge" and report.n_points == 3
    assert np.isfinite(report.details["lambda_abs"])
    assert report.details["train_mae_after"] < report.details["train_mae_before"]
    assert after < 0.9 * before, (before, after)


@pytest.mark.slow
@pytest.mark.shared
def test_reset_and_save_load_round_trip(model: SevenNetSurrogate, split, tmp_path: Path) -> None:
    points, test = split
    atoms = test[-1]
    pre = model.predict(atoms)
    state_before = {k: v.clone() for k, v in model.network.module.state_dict().items()}

    model.fine_tune(points)
    tuned = model.predict(atoms)
    assert np.abs(tuned.forces - pre.forces).max() > 1e-3

    path = tmp_path / "sevennet_state.pt"
    model.save(path)
    plain = torch.load(path, weights_only=True)  # plain tensors only
    assert set(plain) >= {"format", "settings", "head_in_weight", "head_out_weight"}
    loaded = SevenNetSurrogate.load(path)
    again = loaded.predict(atoms)
    np.testing.assert_allclose(again.forces, tuned.forces, atol=1e-6)
    assert again.energy == pytest.approx(tuned.energy, abs=1e-5)

    model.reset()
    back = model.predict(atoms)
    np.testing.assert_array_equal(back.forces, pre.forces)
    assert back.energy == pre.energy
    for key, value in model.network.module.state_dict().items():
        assert torch.equal(value, state_before[key]), key


@pytest.mark.slow
@pytest.mark.shared
def test_ensemble_spread_and_mean(model: SevenNetSurrogate, split) -> None:
    points, test = split
    atoms = test[0]
    ensemble = make_surrogate("sevennet", ensemble_size=4)
    assert isinstance(ensemble, SevenNetSurrogate)
    untrained = ensemble.predict(atoms)
    assert untrained.force_spread is not None
    np.testing.assert_allclose(untrained.force_spread, 0.0, atol=1e-6)

    ensemble.fine_tune(points)
    model.fine_tune(points)
    pred = ensemble.predict(atoms)
    single = model.predict(atoms)
    free = free_atom_mask(atoms)
    assert pred.force_spread is not None and pred.force_spread.shape == (len(atoms),)
    assert pred.force_spread[free].max() > 1e-4
    np.testing.assert_allclose(pred.forces, single.forces, atol=1e-4)
    assert pred.energy == pytest.approx(single.energy, abs=1e-3)
    assert single.force_spread is None

    calc = ensemble.as_ase_calculator()
    probe = atoms.copy()
    probe.calc = calc
    np.testing.assert_allclose(probe.get_forces(apply_constraint=False), pred.forces, atol=1e-6)
    np.testing.assert_allclose(calc.results["force_spread"], pred.force_spread)


@pytest.mark.slow
@pytest.mark.shared
def test_paper_method_trains_only_the_head(split) -> None:
    points, _ = split
    paper = SevenNetSurrogate(method="paper", epochs=5)
    before = {k: v.clone() for k, v in paper.network.module.state_dict().items()}
    report = paper.fine_tune(points)
    after = paper.network.module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(HEAD_KEYS)
    assert report.details["epochs"] == 5
    assert report.details["loss_last_epoch"] < report.details["loss_first_epoch"]
    assert report.details["train_mae_after"] < report.details["train_mae_before"]

    # The same optimisation through the network (double backward) agrees with the
    # cached-Jacobian backend.
    paper.reset()
    paper.update_settings(epochs=3)
    paper.fine_tune(points[:1])
    w_jac = paper.effective_head()
    paper.reset()
    paper.update_settings(paper_backend="autograd")
    paper.fine_tune(points[:1])
    w_auto = paper.effective_head()
    change = np.abs(w_jac - paper.w0).max()
    assert change > 2e-5
    np.testing.assert_allclose(w_auto, w_jac, atol=1e-2 * change)


@pytest.mark.slow
@pytest.mark.shared
def test_single_point_fit_is_conservative(model: SevenNetSurrogate, split) -> None:
    points, test = split
    before = _free_mae(model, test)
    report = model.fine_tune(points[:1])
    assert report.details["cv_mode"].endswith("over free atoms")
    assert report.details["lambda_rel"] >= model.settings.single_point_min_lambda
    assert report.details["train_mae_after"] < report.details["train_mae_before"]
    # one early frame says little about the minimum: no large degradation allowed
    # (on this system the first frame's fit costs ~12% on the test window)
    assert _free_mae(model, test) < 1.25 * before


def test_bad_inputs_give_clear_errors(model: SevenNetSurrogate) -> None:
    with pytest.raises(ValueError, match="at least one"):
        model.fine_tune([])
    with pytest.raises(ValueError, match="Po"):
        model.predict(Atoms("Po2", positions=[[0, 0, 0], [0, 0, 2.5]]))
    with pytest.raises(ValueError, match="cell vector"):
        model.predict(Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]], pbc=True))
    with pytest.raises(ValueError, match="shape"):
        LabelledPoint(Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]]), 0.0, np.zeros((3, 3)))
    fixed = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]], constraint=FixAtoms([0, 1]))
    with pytest.raises(ValueError, match="free atoms"):
        model.fine_tune([LabelledPoint(fixed, 0.0, np.zeros((2, 3)))])
    with pytest.raises(TypeError, match="LabelledPoint"):
        model.fine_tune([fixed])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unknown surrogate"):
        make_surrogate("no-such-model")
    with pytest.raises(TypeError, match="unknown SevenNet option"):
        SevenNetSurrogate(ensembel_size=3)
    with pytest.raises(ValueError, match="method"):
        SevenNetSurrogate(method="sgd")  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.settings.epochs = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="cannot change"):
        model.update_settings(device="cuda")
    with pytest.raises(TypeError, match="unknown SevenNet option"):
        model.update_settings(epoch=3)
    # a molecule without cell or pbc is fine
    pred = model.predict(Atoms("H2O", positions=[[0, 0, 0], [0.76, 0.59, 0], [-0.76, 0.59, 0]]))
    assert pred.forces.shape == (3, 3) and np.isfinite(pred.energy)
    assert "sevennet" in available_surrogates()


@pytest.mark.slow
@pytest.mark.shared
def test_fitting_force_changes_improves_the_start_matched_model(model: SevenNetSurrogate, frames) -> None:
    """The learner's model is force-matched at its start; what is left is how forces change away from
    it. Fitting those changes on nearby points predicts later frames better than the pre-trained head."""
    n = len(frames)
    n_pool = n - max(1, round(0.2 * n))
    reference = LabelledPoint.from_atoms(frames[n_pool - 1])
    nearby = [LabelledPoint.from_atoms(frames[i]) for i in range(n_pool - 6, n_pool - 1)]
    test = frames[n_pool:]
    free = free_atom_mask(reference.atoms)

    def matched_error() -> float:
        offset = reference.forces[free] - model.predict(reference.atoms).forces[free]
        return float(np.mean([np.abs(model.predict(a).forces[free] + offset
                                     - a.get_forces(apply_constraint=False)[free]).mean() for a in test]))

    before = matched_error()
    assert model.fits_force_changes
    report = model.fine_tune_changes(nearby + [reference], reference)
    assert report.details["fitted"] == "force changes" and report.details["reference_changes"] == 5
    assert report.details["train_mae_after"] < report.details["train_mae_before"]
    assert matched_error() < before
    alone = model.fine_tune_changes([reference], reference)  # nothing to difference: the forces are fitted
    assert alone.n_points == 1 and "fitted" not in alone.details
    paper = SevenNetSurrogate(method="paper")
    assert not paper.fits_force_changes
    with pytest.raises(NotImplementedError, match="ridge"):
        paper.fine_tune_changes([reference], reference)


@pytest.mark.slow
@pytest.mark.shared
def test_values_at_fitted_points_agree_with_predict(model: SevenNetSurrogate, split, frames) -> None:
    points, _ = split
    model.fine_tune(points)
    for atoms in (points[1].atoms, frames[-1]):  # a fitted point (cached) and a new one
        free = free_atom_mask(atoms)
        energy, forces = model.values_at(atoms)
        predicted = model.predict(atoms)
        assert energy == pytest.approx(predicted.energy, abs=2e-4)
        assert forces.shape == (int(free.sum()), 3)
        assert np.allclose(forces, predicted.forces[free], atol=2e-4)


@pytest.mark.slow
@pytest.mark.shared
def test_energy_rows_fit_the_parent_energy_differences(model: SevenNetSurrogate, split) -> None:
    """``fine_tune_energies`` also fits each point's energy relative to the newest point's:
    the fitted points' energy differences come out closer to the parent's (on this trajectory the later
    frames, 10 meV off already, do not gain: 10.6 -> 11.4 meV measured)."""
    points, _ = split
    anchor = points[-1]

    def errors() -> float:
        """Mean error of the model's energy differences to the anchor over the other fitted points."""
        base = model.predict(anchor.atoms).energy
        return float(np.mean([abs(model.predict(p.atoms).energy - base - (p.energy - anchor.energy))
                              for p in points[:-1]]))

    model.fine_tune(points)
    forces_only = errors()
    assert model.last_report.details["cv_mode"] == "leave-one-point-out"
    assert model.fits_energy_differences
    report = model.fine_tune_energies(points, 1.0)
    with_energy = errors()
    assert report.details["energy_weight"] == 1.0
    with pytest.raises(ValueError, match="energy_weight"):
        model.fine_tune_energies(points, -1.0)
    with pytest.raises(NotImplementedError, match="ridge"):
        SevenNetSurrogate(method="paper").fine_tune_energies(points, 1.0)
    assert with_energy < 0.5 * forces_only  # measured 171 -> 61 meV
