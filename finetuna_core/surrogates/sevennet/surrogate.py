"""The SevenNet surrogate: prediction, fine-tuning of the linear head, state.

Fine-tuning changes only the two head layers (see :mod:`.network`); the forces are linear in
their effective 128-vector ``w``, ``F = M w`` with ``M = -J^T`` from :mod:`.jacobian`, cached per
parent point.  The default method is the ridge refit of ``w``
(:mod:`~finetuna_core.surrogates.training.ridge`), milliseconds once ``J`` is known.  The
paper's recipe (``method="paper"``) runs the shared AdamW loop
(:mod:`~finetuna_core.surrogates.training.paper`) on the two raw head layers; since the
backbone is frozen its loss depends on the head only through ``F = M (c A b)``, so the default
``paper_backend="jacobian"`` runs the identical optimisation on the cached ``M``, and
``paper_backend="autograd"`` runs it through the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ase import Atoms

from ..base import FineTuneReport, LabelledPoint, Prediction, Surrogate, free_atom_mask
from ..training import ridge
from ..training.paper import TrainingLog, train_paper_recipe
from .checkpoint import file_sha256
from .ensemble import predict
from .jacobian import JacobianEngine
from .network import HeadNetwork
from .settings import NETWORK_FIELDS, JacobianMode, SevenNetSettings

__all__ = ["SAVE_FORMAT", "SevenNetSurrogate"]

SAVE_FORMAT = "finetuna_core.surrogates.sevennet/1"


def _structure_key(atoms: Atoms, free: np.ndarray, mode: str) -> str:
    digest = hashlib.sha1()
    for arr in (
        atoms.get_atomic_numbers().astype(np.int64),
        np.ascontiguousarray(atoms.get_positions(), dtype=np.float64),
        np.ascontiguousarray(np.asarray(atoms.get_cell()), dtype=np.float64),
        np.asarray(atoms.pbc, dtype=bool),
        np.asarray(free, dtype=np.int64),
    ):
        digest.update(arr.tobytes())
    return digest.hexdigest() + mode


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class SevenNetSurrogate(Surrogate):
    """SevenNet-0 surrogate; fast ridge refit (default) or the paper's recipe.

    Args:
        settings: a :class:`SevenNetSettings`; keyword ``options`` override its fields, so
            ``SevenNetSurrogate(ensemble_size=5)`` works too.

    Attributes:
        network: the model (:class:`HeadNetwork`); ``jacobians``: its Jacobian engine.
        w0: the pre-trained effective head.
        last_report: the report of the latest :meth:`fine_tune`, or None.
    """

    name = "sevennet"

    def __init__(self, settings: SevenNetSettings | None = None, **options: Any) -> None:
        base = settings.to_plain() if settings is not None else {}
        self._check_option_names(options)
        self.settings = SevenNetSettings.from_plain(base, **options)
        self.device = _resolve_device(self.settings.device)
        self.network = HeadNetwork(self.settings.model, self.device)
        self.jacobians = JacobianEngine(self.network)
        self.cutoff = self.network.cutoff
        self.type_map = self.network.type_map
        self._checkpoint_sha256: str | None = None
        self._pretrained_head = self.network.head_weights()
        self.w0 = self.network.effective_head()
        self._deviations: np.ndarray | None = None  # (K, n_features) ensemble offsets from w
        self._jacobian_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._feature_cache: OrderedDict[str, tuple[np.ndarray, float]] = OrderedDict()
        self.last_report: FineTuneReport | None = None
        self.reset()

    @staticmethod
    def _check_option_names(options: dict[str, Any]) -> None:
        known = {f.name for f in dataclasses.fields(SevenNetSettings)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown SevenNet option(s): {', '.join(unknown)}")

    def update_settings(self, **changes: Any) -> None:
        """Change fine-tuning or Jacobian options, keeping the model and its Jacobian cache.

        ``model`` and ``device`` cannot change: build a new surrogate for those.
        """
        self._check_option_names(changes)
        fixed = sorted(NETWORK_FIELDS & set(changes))
        if fixed:
            raise ValueError(f"{', '.join(fixed)} cannot change on a built surrogate; build a new one")
        if self.settings.ensemble_size != changes.get("ensemble_size", self.settings.ensemble_size):
            raise ValueError("ensemble_size cannot change on a built surrogate; build a new one")
        self.settings = dataclasses.replace(self.settings, **changes)

    @property
    def ensemble_size(self) -> int:
        return self.settings.ensemble_size

    @property
    def checkpoint_sha256(self) -> str:
        """sha256 of the pre-trained checkpoint file (computed lazily)."""
        if self._checkpoint_sha256 is None:
            self._checkpoint_sha256 = file_sha256(self.network.checkpoint_path)
        return self._checkpoint_sha256

    def effective_head(self) -> np.ndarray:
        """The effective 128-vector ``w`` of the two head layers (float64 copy)."""
        return self.network.effective_head()

    def set_effective_head(self, w: np.ndarray) -> None:
        """Write ``w`` into the model (minimal rank-1 change of the first head layer)."""
        self.network.set_effective_head(w)

    # ----------------------------------------------------------------- prediction

    def predict(self, atoms: Atoms) -> Prediction:
        """Energy and forces (ensemble mean) and, with an ensemble, the force spread."""
        return predict(self.network, self.network.graph(atoms), self._deviations)

    # ----------------------------------------------------------------- Jacobian

    def jacobian(self, atoms: Atoms, free: np.ndarray | None = None, mode: JacobianMode | None = None) -> np.ndarray:
        """J = dS/dr restricted to the given atoms' coordinates, shape (128, 3 n_free).

        ``S = sum_i scale(z_i) h_i``; columns are ordered (atom, x/y/z) for the atoms in
        ``free`` (default: the free atoms of ``atoms.constraints``).  Forces on those atoms
        are ``-(J^T w).reshape(-1, 3)``.  Results are cached per structure (LRU).
        """
        if free is None:
            free = np.flatnonzero(free_atom_mask(atoms))
        free = np.asarray(free, dtype=np.int64)
        mode = mode or self.settings.jacobian_mode
        key = _structure_key(atoms, free, mode)
        hit = self._jacobian_cache.get(key)
        if hit is not None:
            self._jacobian_cache.move_to_end(key)
            return hit
        s = self.settings
        jac = self.jacobians.compute(self.network.graph(atoms), free, mode, chunk=s.jacobian_chunk,
                                     memory_mb=s.jacobian_memory_mb)
        jac.setflags(write=False)
        self._jacobian_cache[key] = jac
        while len(self._jacobian_cache) > s.cache_size:
            self._jacobian_cache.popitem(last=False)
        return jac

    def precompute(self, points: Sequence[LabelledPoint | Atoms]) -> float:
        """Fill the Jacobian and feature caches for ``points`` ahead of :meth:`fine_tune`; returns seconds.

        The learner may call this while the parent computes, so the next fine-tune only
        solves the small regression.
        """
        start = time.perf_counter()
        for point in points:
            atoms = point.atoms if isinstance(point, LabelledPoint) else point
            self.jacobian(atoms)
            self._features(atoms)
        return time.perf_counter() - start

    def _features(self, atoms: Atoms) -> tuple[np.ndarray, float]:
        """``S`` and the constant ``c`` with ``E = S . w + c`` (one forward pass, cached per structure)."""
        key = _structure_key(atoms, free_atom_mask(atoms), "features")
        hit = self._feature_cache.get(key)
        if hit is not None:
            self._feature_cache.move_to_end(key)
            return hit
        graph = self.network.graph(atoms)
        with torch.no_grad():
            h, atom_type = self.network.node_features(graph, graph.edge_vec(graph.pos))
            energy = float(self.network.atomic_energies(h, atom_type).sum().item())
            total = self.network.feature_sum(h, atom_type).double().cpu().numpy()
        found = (total, energy - float(total @ self.effective_head()))
        self._feature_cache[key] = found
        while len(self._feature_cache) > self.settings.cache_size:
            self._feature_cache.popitem(last=False)
        return found

    def values_at(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        """Energy and free-atom forces of the current head from the cached ``S`` and ``J`` (a model run
        only for what is not cached): milliseconds at a point the surrogate was fine-tuned on."""
        total, constant = self._features(atoms)
        w = self.effective_head()
        jac = self.jacobian(atoms)
        return float(total @ w + constant), -(jac.T @ w).reshape(-1, 3)

    def _linear_point(self, point: LabelledPoint) -> ridge.LinearForcePoint:
        free = np.flatnonzero(point.free_mask)
        jac = self.jacobian(point.atoms, free)
        return ridge.LinearForcePoint(design=-jac.T, target=point.forces[free].reshape(-1))

    # ----------------------------------------------------------------- fine-tuning

    @staticmethod
    def _usable(points: Sequence[LabelledPoint]) -> list[LabelledPoint]:
        points = list(points)
        if not points:
            raise ValueError("fine_tune needs at least one LabelledPoint")
        for point in points:
            if not isinstance(point, LabelledPoint):
                raise TypeError(f"expected LabelledPoint, got {type(point).__name__}")
        usable = [p for p in points if p.free_mask.any()]
        if not usable:
            raise ValueError("no point has free atoms: nothing to fit")
        return usable

    def fine_tune(self, points: Sequence[LabelledPoint]) -> FineTuneReport:
        """Fine-tune on ALL ``points`` (oldest first) with ``settings.method``."""
        return self._fine_tune(points, 0.0)

    @property
    def fits_energy_differences(self) -> bool:
        """The ridge refit can fit energy differences; the paper's recipe fits forces only."""
        return self.settings.method == "ridge"

    def fine_tune_energies(self, points: Sequence[LabelledPoint], energy_weight: float) -> FineTuneReport:
        """Ridge refit on the forces and, for every point of the newest point's composition, its
        energy relative to the newest point's (one row each, weighted ``energy_weight`` against the
        point's forces at the same relative error; see :mod:`~finetuna_core.surrogates.training.ridge`)."""
        if not self.fits_energy_differences:
            raise NotImplementedError("energy differences are fitted by the ridge refit only (method='ridge')")
        if energy_weight < 0:
            raise ValueError(f"energy_weight must be >= 0, got {energy_weight}")
        return self._fine_tune(points, energy_weight)

    def _fine_tune(self, points: Sequence[LabelledPoint], energy_weight: float) -> FineTuneReport:
        start = time.perf_counter()
        usable = self._usable(points)
        t_jac = time.perf_counter()
        n_cached = len(self._jacobian_cache)
        data = [self._linear_point(p) for p in usable]
        if energy_weight > 0 and len(usable) >= 2:
            data = self._with_energy_rows(usable, data)
        details: dict[str, Any] = {
            "seconds_jacobian": time.perf_counter() - t_jac,
            "new_jacobians": max(0, len(self._jacobian_cache) - n_cached),
            "skipped_points_without_free_atoms": len(list(points)) - len(usable),
        }
        if energy_weight > 0:
            details["energy_weight"] = energy_weight
        return self._fit(usable, data, details, start, self.settings.method, energy_weight)

    def _with_energy_rows(self, usable: Sequence[LabelledPoint],
                          data: list[ridge.LinearForcePoint]) -> list[ridge.LinearForcePoint]:
        """``data`` with an energy row on every point of the newest point's composition (the anchor)."""
        anchor = usable[-1]
        s_a = self._features(anchor.atoms)[0]
        numbers = anchor.atoms.get_atomic_numbers()
        out = []
        for p, d in zip(usable, data, strict=True):
            if p is not anchor and np.array_equal(p.atoms.get_atomic_numbers(), numbers):
                s_p = self._features(p.atoms)[0]
                d = dataclasses.replace(d, energy_design=s_p - s_a, energy_target=float(p.energy - anchor.energy))
            out.append(d)
        return out

    @property
    def fits_force_changes(self) -> bool:
        """The ridge refit can fit force changes; the paper's recipe fits forces only."""
        return self.settings.method == "ridge"

    def fine_tune_changes(self, points: Sequence[LabelledPoint], reference: LabelledPoint) -> FineTuneReport:
        """Ridge refit of the head on ``F(p) - F(reference)`` over every other point with the same free atoms.

        With no such point it fits the reference's forces (:meth:`fine_tune` on it alone).
        """
        if not self.fits_force_changes:
            raise NotImplementedError("force changes are fitted by the ridge refit only (method='ridge')")
        start = time.perf_counter()
        usable = self._usable(points)
        base = self._linear_point(reference)
        mask = reference.free_mask
        others = [p for p in usable if p is not reference and np.array_equal(p.free_mask, mask)]
        if not others:
            return self.fine_tune([reference])
        data = []
        for point in others:
            linear = self._linear_point(point)
            data.append(ridge.LinearForcePoint(linear.design - base.design, linear.target - base.target))
        details: dict[str, Any] = {"fitted": "force changes", "reference_changes": len(data)}
        return self._fit(others, data, details, start, "ridge")

    def _fit(self, usable: Sequence[LabelledPoint], data: Sequence[ridge.LinearForcePoint], details: dict[str, Any],
             start: float, method: str, energy_weight: float = 0.0) -> FineTuneReport:
        """Fit the head on the linear ``data`` (forces or force changes, energy rows if any) and report."""
        s = self.settings
        ridge_settings = dataclasses.replace(s.ridge_settings(), energy_weight=energy_weight)
        details["train_mae_before"] = ridge.train_mae(data, self.effective_head())
        weights = ridge.point_weights(data, ridge_settings)
        fit: ridge.RidgeFit | None = None
        if method == "ridge":
            fit = ridge.fit_ridge(data, weights, self.w0, ridge_settings)
            self.set_effective_head(fit.weights)
            details.update(fit.details())
        else:
            details.update(self._fit_paper(usable, data))
        if self.ensemble_size > 1:
            if fit is None:  # paper method: the bootstrap heads' regularisation from CV
                fit = ridge.fit_ridge(data, weights, self.w0, ridge_settings)
            lam = fit.lambda_abs if np.isfinite(fit.lambda_abs) else ridge.fallback_lambda(data, weights,
                                                                                            ridge_settings)
            self._deviations = ridge.bootstrap_deviations(data, weights, self.w0, lam, self.ensemble_size, s.seed)
            details["ensemble_lambda_abs"] = float(lam)
        details["train_mae_after"] = ridge.train_mae(data, self.effective_head())
        report = FineTuneReport(method=method, n_points=len(usable), seconds=time.perf_counter() - start,
                                details=details)
        self.last_report = report
        return report

    def _fit_paper(self, points: Sequence[LabelledPoint], data: Sequence[ridge.LinearForcePoint]) -> dict[str, Any]:
        s = self.settings
        if s.paper_train_on == "newest":
            points, data = points[-1:], data[-1:]
        if s.paper_backend == "jacobian":
            log = self._fit_paper_jacobian(data)
        else:
            log = self._fit_paper_autograd(points)
        return {**log.details(), "backend": s.paper_backend}

    def _fit_paper_jacobian(self, data: Sequence[ridge.LinearForcePoint]) -> TrainingLog:
        """The recipe on ``F = M (c A_raw b_raw)``, using the cached ``M``."""
        net = self.network
        A = net.head_in.detach().double().cpu().view(net.n_features, net.n_hidden).clone().requires_grad_(True)
        b = net.head_out.detach().double().cpu().view(net.n_hidden).clone().requires_grad_(True)
        designs = [torch.as_tensor(d.design) for d in data]
        targets = [torch.as_tensor(d.target) for d in data]
        c = net.head_scale

        def predict_forces(i: int) -> torch.Tensor:
            return designs[i] @ (c * (A @ b))

        log = train_paper_recipe([A, b], targets, predict_forces, self.settings.paper_recipe())
        net.load_head(A.detach(), b.detach())
        return log

    def _fit_paper_autograd(self, points: Sequence[LabelledPoint]) -> TrainingLog:
        """The recipe through the network (force loss by double backward)."""
        net = self.network
        graphs = [net.graph(p.atoms) for p in points]
        frees = [torch.as_tensor(np.flatnonzero(p.free_mask), device=self.device) for p in points]
        targets = [
            torch.tensor(np.array(p.forces), dtype=torch.float32, device=self.device)[f]
            for p, f in zip(points, frees, strict=True)
        ]

        def predict_forces(i: int) -> torch.Tensor:
            return net.forces_for_training(graphs[i], frees[i])

        params = [net.head_in, net.head_out]
        for p in params:
            p.requires_grad_(True)
        try:
            return train_paper_recipe(params, targets, predict_forces, self.settings.paper_recipe())
        finally:
            for p in params:
                p.requires_grad_(False)

    # ----------------------------------------------------------------- state

    def reset(self) -> None:
        """Back to the pre-trained head; ensemble offsets zero (Jacobian cache kept)."""
        self.network.load_head(*self._pretrained_head)
        n_features = self.network.n_features
        self._deviations = np.zeros((self.ensemble_size, n_features)) if self.ensemble_size > 1 else None
        self.last_report = None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save settings and head weights as plain tensors (loadable with weights_only)."""
        head_in, head_out = self.network.head_weights()
        state = {
            "format": SAVE_FORMAT,
            "settings": self.settings.to_plain(),
            "pretrained_sha256": self.checkpoint_sha256,
            "head_in_weight": head_in.cpu(),
            "head_out_weight": head_out.cpu(),
            "deviations": None if self._deviations is None else torch.as_tensor(self._deviations, dtype=torch.float64),
        }
        torch.save(state, os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> SevenNetSurrogate:
        """Load a state written by :meth:`save` (``weights_only=True``).

        ``overrides`` replace saved settings (e.g. ``device="cuda"``).
        """
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != SAVE_FORMAT:
            raise ValueError(f"{path} is not a saved SevenNet surrogate ({SAVE_FORMAT})")
        settings = SevenNetSettings.from_plain(state["settings"], **overrides)
        surrogate = cls(settings)
        if state["pretrained_sha256"] != surrogate.checkpoint_sha256:
            raise ValueError(
                f"{path} was fine-tuned from a different pre-trained checkpoint than "
                f"{surrogate.network.checkpoint_path}"
            )
        try:
            surrogate.network.load_head(state["head_in_weight"], state["head_out_weight"])
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        deviations = state.get("deviations")
        n_features = surrogate.network.n_features
        if deviations is not None:
            deviations = deviations.numpy()
            if deviations.shape != (settings.ensemble_size, n_features):
                raise ValueError(f"{path}: ensemble offsets do not match ensemble_size")
        elif settings.ensemble_size > 1:
            deviations = np.zeros((settings.ensemble_size, n_features))
        surrogate._deviations = deviations
        return surrogate
