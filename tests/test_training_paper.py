"""The shared training loop of the paper's recipe (finetuna_core.surrogates.training.paper), on tiny linear models."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from finetuna_core.surrogates.fairchem import FairchemSettings  # noqa: E402
from finetuna_core.surrogates.sevennet.settings import SevenNetSettings  # noqa: E402
from finetuna_core.surrogates.training.paper import PaperRecipe, train_paper_recipe  # noqa: E402


def linear_problem(n_points: int, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    w_true = torch.randn(4, generator=gen, dtype=torch.float64)
    designs = [torch.randn(6, 4, generator=gen, dtype=torch.float64) for _ in range(n_points)]
    return w_true, designs, [d @ w_true for d in designs]


def test_the_defaults_are_the_published_recipe_for_both_backends() -> None:
    recipe = PaperRecipe()
    assert (recipe.epochs, recipe.lr, recipe.amsgrad, recipe.force_loss_weight) == (400, 3e-4, True, 100.0)
    assert (recipe.plateau_factor, recipe.plateau_patience, recipe.weight_decay) == (0.9, 3, 0.01)
    assert SevenNetSettings().paper_recipe() == recipe
    assert FairchemSettings(checkpoint="model.pt").paper_recipe() == recipe


def test_the_loop_fits_and_reports_the_weighted_loss() -> None:
    w_true, designs, targets = linear_problem(3)
    w = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    first_loss = 100.0 * float(np.mean([torch.mean(t**2).item() for t in targets]))
    recipe = PaperRecipe(epochs=300, lr=0.05)
    log = train_paper_recipe([w], targets, lambda i: designs[i] @ w, recipe)
    assert log.epochs == 300 and log.seconds_train >= 0
    # the first epoch's loss is the weighted MSE seen by the first updates (near the start)
    assert log.loss_first_epoch == pytest.approx(first_loss, rel=0.2)
    assert log.loss_last_epoch < 1e-3 * log.loss_first_epoch
    np.testing.assert_allclose(w.detach().numpy(), w_true.numpy(), atol=0.05)  # weight decay biases it a little


def test_the_order_is_shuffled_reproducibly() -> None:
    _, designs, targets = linear_problem(4)

    def run(seed: int) -> np.ndarray:
        w = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        train_paper_recipe([w], targets, lambda i: designs[i] @ w, PaperRecipe(epochs=3, lr=0.1, seed=seed))
        return w.detach().numpy()

    np.testing.assert_array_equal(run(0), run(0))
    assert np.abs(run(0) - run(1)).max() > 1e-6


def test_the_scheduler_steps_once_per_epoch_on_the_epoch_loss() -> None:
    """A loss that cannot improve: patience 3 means one reduction after epoch 5 (not after step 5)."""
    w = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    targets = [torch.ones(3, dtype=torch.float64)] * 2
    recipe = PaperRecipe(epochs=8, lr=1e-3)
    log = train_paper_recipe([w], targets, lambda i: 0.0 * w.expand(3), recipe)
    assert log.final_lr == pytest.approx(recipe.lr * recipe.plateau_factor)
    assert log.loss_first_epoch == log.loss_last_epoch == pytest.approx(100.0)


def test_recipe_checks_and_zero_epochs() -> None:
    with pytest.raises(ValueError, match="plateau_factor"):
        PaperRecipe(plateau_factor=1.5)
    with pytest.raises(ValueError, match="at least one"):
        train_paper_recipe([], [], lambda i: torch.zeros(1), PaperRecipe())
    w = torch.ones(2, requires_grad=True)
    log = train_paper_recipe([w], [torch.zeros(2)], lambda i: w, dataclasses.replace(PaperRecipe(), epochs=0))
    assert log.loss_first_epoch is None and log.final_lr == PaperRecipe().lr
    assert torch.equal(w.detach(), torch.ones(2))
