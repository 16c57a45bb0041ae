"""Options of the SevenNet surrogate, with their defaults in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from ..training.paper import PaperRecipe
from ..training.ridge import DEFAULT_LAMBDA_GRID, CvRule, RidgeSettings

__all__ = ["FineTuneMethod", "JacobianMode", "PaperBackend", "PaperTrainOn", "SevenNetSettings"]

JacobianMode = Literal["sparse", "forward", "reverse", "reverse_loop"]
FineTuneMethod = Literal["ridge", "paper"]
PaperTrainOn = Literal["all", "newest"]
PaperBackend = Literal["jacobian", "autograd"]

#: Fields that select the network itself: changing them needs a new surrogate.
NETWORK_FIELDS = frozenset({"model", "device"})


@dataclass(frozen=True)
class SevenNetSettings:
    """All options of the SevenNet surrogate.

    Model and device
        model: pre-trained model name known to ``sevenn`` (only ones shipped inside the
            wheel work offline, e.g. ``"7net-0"``) or a path to a SevenNet checkpoint with
            the same linear head.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available).
    Fine-tuning
        method: ``"ridge"`` (fast, default) or ``"paper"`` (the FINETUNA paper's recipe).
        ensemble_size: number of heads; > 1 adds a per-atom force spread to predictions.
            The K heads are ridge fits (CV-chosen lambda) on bootstrap resamples of the free
            atoms of every point, re-centred on the fitted head, so the ensemble mean is the
            single-head prediction and only the spread is new.  It costs one forward and K
            backward passes per prediction; before the first fine-tune the spread is 0.
        seed: seed of the bootstrap resampling (ensemble) and of the paper's shuffling.
    Jacobian (J = d(sum of scaled features)/d(free-atom positions))
        jacobian_mode: ``"sparse"`` (default, fastest measured): forward mode over the
            free coordinates where the geometric (edge) part of every convolution's
            tangent is applied only on the edges touching the moved atom and the node
            part is a batched matmul over atom pairs;
            ``"forward"``: plain vmapped forward-mode AD (``torch.func.jvp``);
            ``"reverse"``: batched vector-Jacobian products (``is_grads_batched``);
            ``"reverse_loop"``: 128 separate backward passes (least memory).  All are exact.
        jacobian_chunk: tangents per batch (bounds memory).  The sparse mode reads each
            convolution's pair matrices once per batch, so one batch for all (64) measured
            fastest; plain forward mode uses at most 16 (its per-edge tensors are large).
        jacobian_memory_mb: largest per-convolution pair matrix (MB) the sparse mode builds;
            beyond it the convolution's tangents go through e3nn per tangent (slower).
        cache_size: number of per-point Jacobians kept (LRU).
    Ridge refit (see :class:`~finetuna_core.surrogates.training.ridge.RidgeSettings`)
        relative_weighting, force_floor, recency_decay, lambda_grid, cv_rule,
        one_point_folds, single_point_min_lambda, fixed_lambda, energy_floor (of the energy rows
        that :meth:`~.surrogate.SevenNetSurrogate.fine_tune_energies` adds).  Relative weighting
        measured a median test-MAE ratio at 3 points of 0.07 with it, 0.43 without.
    Paper recipe (see :class:`~finetuna_core.surrogates.training.paper.PaperRecipe`)
        epochs, lr, weight_decay, amsgrad, plateau_factor, plateau_patience, force_loss_weight.
        paper_train_on: ``"all"`` points given (the interface) or ``"newest"`` only (the
            paper's incremental variant).
        paper_backend: ``"jacobian"`` (the same optimisation on the cached J, milliseconds per
            epoch) or ``"autograd"`` (through the network, a double backward per step).
    """

    model: str = "7net-0"
    device: str = "cpu"
    method: FineTuneMethod = "ridge"
    ensemble_size: int = 1
    seed: int = 0
    jacobian_mode: JacobianMode = "sparse"
    jacobian_chunk: int = 64
    jacobian_memory_mb: float = 512.0
    cache_size: int = 256
    relative_weighting: bool = RidgeSettings.relative_weighting
    force_floor: float = RidgeSettings.force_floor
    recency_decay: float = RidgeSettings.recency_decay
    lambda_grid: tuple[float, ...] = DEFAULT_LAMBDA_GRID
    cv_rule: CvRule = RidgeSettings.cv_rule
    one_point_folds: int = RidgeSettings.one_point_folds
    single_point_min_lambda: float = RidgeSettings.single_point_min_lambda
    fixed_lambda: float | None = RidgeSettings.fixed_lambda
    energy_floor: float = RidgeSettings.energy_floor
    epochs: int = PaperRecipe.epochs
    lr: float = PaperRecipe.lr
    weight_decay: float = PaperRecipe.weight_decay
    amsgrad: bool = PaperRecipe.amsgrad
    plateau_factor: float = PaperRecipe.plateau_factor
    plateau_patience: int = PaperRecipe.plateau_patience
    force_loss_weight: float = PaperRecipe.force_loss_weight
    paper_train_on: PaperTrainOn = "all"
    paper_backend: PaperBackend = "jacobian"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambda_grid", tuple(float(x) for x in self.lambda_grid))
        checks: list[tuple[bool, str]] = [
            (self.method in get_args(FineTuneMethod), f"method must be 'ridge' or 'paper': {self.method!r}"),
            (self.ensemble_size >= 1, "ensemble_size must be >= 1"),
            (self.jacobian_mode in get_args(JacobianMode), f"unknown jacobian_mode {self.jacobian_mode!r}"),
            (self.jacobian_chunk >= 1, "jacobian_chunk must be >= 1"),
            (self.cache_size >= 1, "cache_size must be >= 1"),
            (self.paper_train_on in get_args(PaperTrainOn), "paper_train_on: 'all' or 'newest'"),
            (self.paper_backend in get_args(PaperBackend), "paper_backend: 'jacobian' or 'autograd'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.ridge_settings()  # their own checks
        self.paper_recipe()

    def ridge_settings(self) -> RidgeSettings:
        """The ridge refit's options."""
        return RidgeSettings(
            relative_weighting=self.relative_weighting,
            force_floor=self.force_floor,
            recency_decay=self.recency_decay,
            lambda_grid=self.lambda_grid,
            cv_rule=self.cv_rule,
            one_point_folds=self.one_point_folds,
            single_point_min_lambda=self.single_point_min_lambda,
            fixed_lambda=self.fixed_lambda,
            seed=self.seed,
            energy_floor=self.energy_floor,
        )

    def paper_recipe(self) -> PaperRecipe:
        """The paper recipe's hyper-parameters."""
        return PaperRecipe(
            epochs=self.epochs,
            lr=self.lr,
            weight_decay=self.weight_decay,
            amsgrad=self.amsgrad,
            plateau_factor=self.plateau_factor,
            plateau_patience=self.plateau_patience,
            force_loss_weight=self.force_loss_weight,
            seed=self.seed,
        )

    def to_plain(self) -> dict[str, Any]:
        """Settings as plain Python values (safe for ``torch.load(weights_only=True)``)."""
        plain = asdict(self)
        plain["lambda_grid"] = list(self.lambda_grid)
        return plain

    @classmethod
    def from_plain(cls, plain: dict[str, Any], **overrides: Any) -> SevenNetSettings:
        """Rebuild settings from :meth:`to_plain` output (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in plain.items() if k in names}
        values.update(overrides)
        return cls(**values)
