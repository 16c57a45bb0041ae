"""The FINETUNA paper's fine-tuning recipe, as one training loop shared by every backend.

The published recipe (Musielewicz et al., 2022, fine-tuning a pre-trained GemNet-T on OC20):
only the output head trains, everything else is frozen; AdamW with amsgrad at learning rate
3e-4; a ReduceLROnPlateau scheduler with factor 0.9 and patience 3; 400 epochs; batch size 1;
force loss weight 100 and energy loss weight 0 (energies are never trained); the loss covers
the free atoms only.  The paper's trainer gives AdamW no weight decay of its own, so AdamW's
default of 0.01 applies, and it is kept here.

What the paper does not pin down is fixed here, the same for every backend: the force loss is
the mean squared error over the free atoms' Cartesian components times the force weight; the
points are visited in a fresh seeded random order each epoch; the scheduler steps once per epoch
on the mean training loss of that epoch (with the paper's one newest point per fine-tune, an
epoch is one optimiser step).

A backend supplies the trainable tensors, the target forces, and a function that predicts the
forces on the free atoms of point ``i`` with gradients flowing to those tensors.  The settings
need no torch; the loop imports it when it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["PaperRecipe", "TrainingLog", "train_paper_recipe"]


@dataclass(frozen=True)
class PaperRecipe:
    """Hyper-parameters of the paper's recipe; the defaults are the published ones.

    Attributes:
        epochs: passes over the points (400).
        lr: AdamW learning rate (3e-4).
        weight_decay: AdamW weight decay (0.01, AdamW's default, which the paper left in place).
        amsgrad: AdamW's amsgrad variant (on).
        plateau_factor: learning-rate factor of ReduceLROnPlateau (0.9).
        plateau_patience: epochs without improvement before the factor applies (3).
        force_loss_weight: weight of the force loss (100).
        seed: seed of the per-epoch visiting order.
    """

    epochs: int = 400
    lr: float = 3e-4
    weight_decay: float = 0.01
    amsgrad: bool = True
    plateau_factor: float = 0.9
    plateau_patience: int = 3
    force_loss_weight: float = 100.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 0, "epochs must be >= 0"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 < self.plateau_factor < 1, "plateau_factor must be in (0, 1)"),
            (self.plateau_patience >= 0, "plateau_patience must be >= 0"),
            (self.force_loss_weight > 0, "force_loss_weight must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True)
class TrainingLog:
    """What :func:`train_paper_recipe` did (losses are per-epoch means, including the weight)."""

    epochs: int
    loss_first_epoch: float | None
    loss_last_epoch: float | None
    final_lr: float
    seconds_train: float

    def details(self) -> dict[str, float | int | None]:
        """Plain numbers for a fine-tune report."""
        return asdict(self)


def train_paper_recipe(
    parameters: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    predict_forces: Callable[[int], torch.Tensor],
    recipe: PaperRecipe,
) -> TrainingLog:
    """Run the recipe on ``parameters`` in place.

    Args:
        parameters: the trainable tensors (``requires_grad`` set by the caller).
        targets: per point, the parent forces on its free atoms.
        predict_forces: ``i -> `` predicted forces on the free atoms of point ``i``, same
            shape as ``targets[i]``, differentiable with respect to ``parameters``.
        recipe: the hyper-parameters.
    """
    if not targets:
        raise ValueError("the paper's recipe needs at least one point")
    import torch

    started = time.perf_counter()
    optimiser = torch.optim.AdamW(
        list(parameters), lr=recipe.lr, weight_decay=recipe.weight_decay, amsgrad=recipe.amsgrad
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, mode="min", factor=recipe.plateau_factor, patience=recipe.plateau_patience
    )
    rng = np.random.default_rng(recipe.seed)
    history: list[float] = []
    for _ in range(recipe.epochs):
        losses = []
        for i in rng.permutation(len(targets)):
            optimiser.zero_grad(set_to_none=True)
            error = predict_forces(int(i)) - targets[int(i)]
            loss = recipe.force_loss_weight * torch.mean(error**2)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
        scheduler.step(history[-1])
    return TrainingLog(
        epochs=recipe.epochs,
        loss_first_epoch=history[0] if history else None,
        loss_last_epoch=history[-1] if history else None,
        final_lr=float(optimiser.param_groups[0]["lr"]),
        seconds_train=time.perf_counter() - started,
    )
