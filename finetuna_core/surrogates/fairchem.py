"""fairchem (UMA / eSEN) surrogates from a local checkpoint file. Nothing is ever downloaded.

Users copy a checkpoint from the model hub themselves and pass its path. Loading is safe:
the file is read with ``torch.load(weights_only=True)`` (fairchem's own loader is forced to do the
same), and every ``_target_`` / module path in the model configuration must lie inside fairchem,
since fairchem instantiates them with hydra. Fine-tuning runs the paper's recipe
(:mod:`.training.paper`, the loop the SevenNet backend uses too) on the energy head, continuing
from the current weights, on all parent points given that have free atoms.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from .base import FineTuneReport, LabelledPoint, Prediction, Surrogate
from .training.paper import PaperRecipe

ALLOWED_PREFIX = "fairchem.core."
_CONFIG_KEYS = ("_target_", "model", "module", "head_cls")


@dataclass(frozen=True)
class FairchemSettings:
    """Options of the fairchem surrogate; the training ones default to the paper's recipe.

    Attributes:
        checkpoint: local path of a fairchem inference checkpoint.
        task_name: the dataset task the model predicts for (``"oc20"``, ``"omat"``, ...).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when present).
        epochs, lr, weight_decay, force_loss_weight, seed: see :class:`PaperRecipe`.
        scheduler_factor, scheduler_patience: its ``plateau_factor`` and ``plateau_patience``.
    """

    checkpoint: str
    task_name: str = "oc20"
    device: str = "auto"
    epochs: int = PaperRecipe.epochs
    lr: float = PaperRecipe.lr
    scheduler_factor: float = PaperRecipe.plateau_factor
    scheduler_patience: int = PaperRecipe.plateau_patience
    weight_decay: float = PaperRecipe.weight_decay
    force_loss_weight: float = PaperRecipe.force_loss_weight
    seed: int = PaperRecipe.seed

    def __post_init__(self) -> None:
        self.paper_recipe()  # its checks

    def paper_recipe(self) -> PaperRecipe:
        """The training hyper-parameters as the shared recipe takes them."""
        return PaperRecipe(epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                           plateau_factor=self.scheduler_factor, plateau_patience=self.scheduler_patience,
                           force_loss_weight=self.force_loss_weight, seed=self.seed)


def audit_config(value: Any, where: str = "model_config") -> None:
    """Refuse any class path outside fairchem: hydra would import and call it."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in _CONFIG_KEYS and isinstance(item, str) and not item.startswith(ALLOWED_PREFIX):
                raise ValueError(f"checkpoint refused: {where}.{key} = {item!r} is not a fairchem class")
            audit_config(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            audit_config(item, f"{where}[{index}]")


@contextmanager
def _weights_only_loads():
    """Make every torch.load inside fairchem a ``weights_only=True`` load."""
    import torch
    from fairchem.core.units.mlip_unit.api.inference import MLIPInferenceCheckpoint

    torch.serialization.add_safe_globals([MLIPInferenceCheckpoint])
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def check_checkpoint(path: str | os.PathLike) -> None:
    """Open the checkpoint with ``weights_only=True`` and audit its configuration."""
    import torch
    from fairchem.core.units.mlip_unit.api.inference import MLIPInferenceCheckpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"fairchem checkpoint not found: {path}. Checkpoints are never downloaded here: copy the "
            "file (e.g. uma-s-1p1.pt) from the model hub yourself and pass its local path")
    with torch.serialization.safe_globals([MLIPInferenceCheckpoint]):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    audit_config(checkpoint.model_config, "model_config")
    audit_config(checkpoint.tasks_config, "tasks_config")


class FairchemSurrogate(Surrogate):
    """A fairchem model behind the surrogate interface; the energy head is what gets fine-tuned."""

    name = "fairchem"

    def __init__(self, checkpoint: str | os.PathLike, **options: Any):
        self.settings = FairchemSettings(checkpoint=str(checkpoint), **options)
        check_checkpoint(self.settings.checkpoint)
        import torch
        from fairchem.core.units.mlip_unit import load_predict_unit
        from fairchem.core.units.mlip_unit.api.inference import InferenceSettings

        device = self.settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        with _weights_only_loads():
            self.unit = load_predict_unit(
                self.settings.checkpoint, device=device,
                inference_settings=InferenceSettings(compile=False, merge_mole=False,
                                                     activation_checkpointing=False))
        self.model = self.unit.model.module
        self.head = self._energy_head()
        self._pretrained = copy.deepcopy(self.head.state_dict())
        self.calculator = None

    def _energy_head(self):
        for head in self.model.output_heads.values():
            inner = getattr(head, "head", head)  # dataset-specific wrappers keep the head inside
            block = getattr(inner, "energy_block", None)
            if block is not None:
                return block
        raise ValueError("this fairchem model has no energy head ('energy_block') to fine-tune")

    # ------------------------------------------------------------------ prediction
    def _batch(self, atoms: Atoms):
        from fairchem.core.datasets.atomic_data import AtomicData, atomicdata_list_to_batch

        data = AtomicData.from_ase(atoms, task_name=self.settings.task_name, r_edges=False,
                                   radius=self.model.backbone.cutoff)
        return atomicdata_list_to_batch([data])

    def predict(self, atoms: Atoms) -> Prediction:
        output = self.unit.predict(self._batch(atoms))
        energy = float(output["energy"].detach().cpu().reshape(-1)[0])
        forces = output["forces"].detach().cpu().numpy().reshape(len(atoms), 3).astype(float)
        return Prediction(energy=energy, forces=forces)

    # ------------------------------------------------------------------ fine-tuning
    def _train_forces(self, batch):
        """Forces with gradients w.r.t. the head's weights (train mode, denormalised)."""
        output = self.model(batch)
        task = self.model.tasks["forces"] if "forces" in self.model.tasks else None
        forces = output["forces"]["forces"]
        return task.normalizer.denorm(forces) if task is not None else forces

    def fine_tune(self, points: Sequence[LabelledPoint]) -> FineTuneReport:
        """The paper's recipe on the energy head, over all ``points`` that have free atoms."""
        import torch

        from .training.paper import train_paper_recipe

        if not points:
            raise ValueError("fine_tune needs at least one parent point")
        usable = [p for p in points if p.free_mask.any()]
        if not usable:
            raise ValueError("no point has free atoms: nothing to fit")
        started = time.perf_counter()
        batches = [self._batch(p.atoms) for p in usable]
        masks = [torch.tensor(p.free_mask, device=self.device) for p in usable]
        targets = [torch.tensor(np.asarray(p.forces), dtype=torch.float32, device=self.device)[mask]
                   for p, mask in zip(usable, masks)]

        def predict_forces(i: int) -> torch.Tensor:
            return self._train_forces(batches[i]).reshape(-1, 3)[masks[i]]

        self.model.requires_grad_(False)
        parameters = list(self.head.parameters())
        for parameter in parameters:
            parameter.requires_grad_(True)
        self.model.train()
        try:
            log = train_paper_recipe(parameters, targets, predict_forces, self.settings.paper_recipe())
        finally:
            self.model.eval()
            self.model.requires_grad_(False)
        return FineTuneReport("paper", len(usable), time.perf_counter() - started, log.details())

    def reset(self) -> None:
        self.head.load_state_dict(self._pretrained)

    def save(self, path: str | os.PathLike) -> None:
        import torch

        torch.save({"checkpoint": self.settings.checkpoint, "task_name": self.settings.task_name,
                    "head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()}}, path)

    @classmethod
    def load(cls, path: str | os.PathLike, **overrides: Any) -> FairchemSurrogate:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
        surrogate = cls(overrides.pop("checkpoint", state["checkpoint"]), task_name=state["task_name"],
                        **overrides)
        surrogate.head.load_state_dict(state["head"])
        return surrogate


def build_random_checkpoint(path: str | os.PathLike, task_name: str = "oc20", channels: int = 16,
                            layers: int = 2, cutoff: float = 6.0, seed: int = 0) -> Path:
    """A small UMA-style (eSCN-MD) model with random weights, saved as a fairchem inference checkpoint.

    For tests of the fairchem code path without a real (hub-hosted) checkpoint.
    """
    import hydra
    import torch
    from fairchem.core.units.mlip_unit.api.inference import MLIPInferenceCheckpoint

    torch.manual_seed(seed)
    backbone = {
        "model": "fairchem.core.models.uma.escn_md.eSCNMDBackbone",
        "max_num_elements": 100, "sphere_channels": channels, "hidden_channels": channels,
        "edge_channels": channels, "num_distance_basis": 32, "num_layers": layers, "lmax": 2, "mmax": 2,
        "cutoff": float(cutoff), "max_neighbors": 50, "otf_graph": True, "use_pbc": True,
        "use_pbc_single": True, "regress_forces": True, "direct_forces": False, "regress_stress": False,
        "direct_stress": False, "act_type": "gate", "ff_type": "spectral", "norm_type": "rms_norm_sh",
        "chg_spin_emb_type": "rand_emb", "cs_emb_grad": True, "dataset_emb_grad": True,
        "dataset_mapping": {task_name: task_name}, "use_dataset_embedding": True,
    }
    model_config = {
        "_target_": "fairchem.core.models.base.HydraModel", "pass_through_head_outputs": True,
        "supports_single_atoms": True, "otf_graph": True, "model_id": "random-test-model", "backbone": backbone,
        "heads": {"efs": {"module": "fairchem.core.models.uma.escn_md.MLP_EFS_Head", "wrap_property": True}},
    }
    tasks = []
    for name, level, dim in (("energy", "system", [1]), ("forces", "atom", [3])):
        tasks.append({
            "_target_": "fairchem.core.units.mlip_unit.mlip_unit.Task", "name": name, "level": level,
            "property": name, "datasets": [task_name],
            "out_spec": {"_target_": "fairchem.core.units.mlip_unit.mlip_unit.OutputSpec", "dim": dim,
                         "dtype": "float32"},
            "normalizer": {"_target_": "fairchem.core.modules.normalization.normalizer.Normalizer", "mean": 0.0,
                           "rmsd": 1.0},
        })
    model = hydra.utils.instantiate(model_config).eval()
    averaged = torch.optim.swa_utils.AveragedModel(model).state_dict()
    torch.save(MLIPInferenceCheckpoint(model_config=model_config, model_state_dict=model.state_dict(),
                                       ema_state_dict=averaged, tasks_config=tasks), path)
    return Path(path)
