"""SevenNet-0 surrogate with fast fine-tuning of its linear output head.

Why a ridge refit is exact here
-------------------------------
SevenNet-0 ends with two bias-free linear layers, ``reduce_input_to_hidden`` (128 -> 64) and
``reduce_hidden_to_energy`` (64 -> 1), with no nonlinearity between them, followed by a frozen
per-element ``scale * e + shift``.  With ``h_i`` the 128 scalar features of atom ``i`` from
the (frozen) interaction blocks, the total energy is

    E = sum_i scale(z_i) * h_i . w + sum_i shift(z_i) = S . w + const,
    S = sum_i scale(z_i) h_i,       w = A @ b   (effective 128-vector of the two layers),

so the forces are exactly linear in ``w``:  ``F = -dE/dr = -J^T w`` with ``J = dS/dr``
(128 x 3N).  Given ``J`` for every parent point, fitting ``w`` to parent forces is a
128-dimensional ridge regression solved in milliseconds; the expensive part is ``J``,
computed once per parent point by forward mode over the free atoms' coordinates and cached.
Each convolution is linearised around the fixed edges (:mod:`.conv_linearisation`): its
edge-geometry derivative is applied only on the edges touching the moved atom, and its
node-feature tangent map becomes per-channel matrices over atom pairs, so all tangents go
through the network as a few batched matmuls (about 1 s for 50 atoms, 17 free, 2 cores).

The paper's recipe (``method="paper"``: AdamW on the head only, force MSE) is available too.
Because only the head trains and the backbone is frozen, its loss depends on the head only
through ``F = -J^T (A b)``; the default ``paper_backend="jacobian"`` runs the identical
optimisation on the cached ``J`` (milliseconds per epoch instead of a network
forward/double-backward per step); ``paper_backend="autograd"`` runs it through the network.

Checkpoint safety
-----------------
``sevenn`` loads its checkpoints with ``torch.load(weights_only=False)``.  This module never
does: it loads the wheel's own checkpoint with ``weights_only=True`` and an allowlist of the
three numpy reconstruction globals the file needs (``numpy.core.multiarray._reconstruct``,
``numpy.ndarray``, ``numpy.dtype`` and the numpy dtype classes).  Our own saved state is a
dict of plain tensors and primitives, saved and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
from ase import Atoms

from .base import FineTuneReport, LabelledPoint, Prediction, Surrogate, free_atom_mask
from .conv_linearisation import Linearisation, linearise, pair_operator_floats

__all__ = [
    "SevenNetSettings",
    "SevenNetSurrogate",
    "load_pretrained_sevennet",
]

HEAD_IN = "reduce_input_to_hidden"
HEAD_OUT = "reduce_hidden_to_energy"
RESCALE = "rescale_atomic_energy"
SAVE_FORMAT = "finetuna_core.surrogates.sevennet/1"

JacobianMode = Literal["sparse", "forward", "reverse", "reverse_loop"]


@dataclass
class SevenNetSettings:
    """All options of the SevenNet surrogate, with their defaults in one place.

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
            ``"reverse_loop"``: 128 separate backward passes.  All are exact.
        jacobian_chunk: tangents per batch (bounds memory).  The sparse mode reads each
            convolution's pair matrices once per batch, so one batch for all (64) measured
            fastest; plain forward mode uses at most 16 (its per-edge tensors are large).
        jacobian_memory_mb: largest per-convolution pair matrix (MB) the sparse mode builds;
            beyond it the convolution's tangents go through e3nn per tangent (slower).
        cache_size: number of per-point Jacobians kept (LRU).
    Ridge refit
        relative_weighting: weight point p by ``1 / (mean(F_dft_p^2) + force_floor^2)`` so
            large-force early frames do not dominate (measured: median test-MAE ratio at 3
            points 0.07 with it, 0.43 without).
        force_floor: eV/Å, the floor in that weight.
        recency_decay: extra weight ``recency_decay ** (n - 1 - p)`` (1.0 = none).
        lambda_grid: candidate regularisation strengths relative to ``trace(G) / 128``
            (G = weighted normal matrix); ``inf`` (keep the pre-trained head) is always
            a candidate.
        cv_rule: ``"min"`` (lowest CV error), ``"one_se"`` (strongest regularisation
            within one standard error of the minimum) or ``"auto"``: ``"min"`` for
            leave-one-point-out CV, ``"one_se"`` for the atom-fold CV of a single point.
        one_point_folds: with a single point, K-fold CV over its free atoms.
        single_point_min_lambda: with a single point, only strengths >= this (relative)
            are candidates: atoms of one frame are correlated, so atom-fold CV is
            optimistic, and one early frame says little about the region near the minimum.
        fixed_lambda: skip CV and use this relative strength.
    Paper recipe
        epochs, lr, weight_decay, amsgrad, plateau_factor, plateau_patience,
        force_loss_weight: AdamW(amsgrad) + ReduceLROnPlateau(stepped per epoch on the
            mean training loss), batch size 1, force MSE on free atoms only.
        paper_train_on: ``"all"`` points given (the interface) or ``"newest"`` only (the
            paper's incremental variant).
        paper_backend: ``"jacobian"`` (same optimisation on cached J) or ``"autograd"``.
    """

    model: str = "7net-0"
    device: str = "cpu"
    method: Literal["ridge", "paper"] = "ridge"
    ensemble_size: int = 1
    seed: int = 0
    jacobian_mode: JacobianMode = "sparse"
    jacobian_chunk: int = 64
    jacobian_memory_mb: float = 512.0
    cache_size: int = 256
    relative_weighting: bool = True
    force_floor: float = 0.05
    recency_decay: float = 1.0
    lambda_grid: tuple[float, ...] = tuple(float(x) for x in np.logspace(-6, 2, 17))
    cv_rule: Literal["auto", "min", "one_se"] = "auto"
    one_point_folds: int = 5
    single_point_min_lambda: float = 1.0
    fixed_lambda: float | None = None
    epochs: int = 400
    lr: float = 3e-4
    weight_decay: float = 0.01
    amsgrad: bool = True
    plateau_factor: float = 0.9
    plateau_patience: int = 3
    force_loss_weight: float = 100.0
    paper_train_on: Literal["all", "newest"] = "all"
    paper_backend: Literal["jacobian", "autograd"] = "jacobian"

    def __post_init__(self) -> None:
        self.lambda_grid = tuple(float(x) for x in self.lambda_grid)
        checks: list[tuple[bool, str]] = [
            (
                self.method in ("ridge", "paper"),
                f"method must be 'ridge' or 'paper': {self.method!r}",
            ),
            (self.ensemble_size >= 1, "ensemble_size must be >= 1"),
            (
                self.jacobian_mode in ("sparse", "forward", "reverse", "reverse_loop"),
                f"unknown jacobian_mode {self.jacobian_mode!r}",
            ),
            (self.jacobian_chunk >= 1, "jacobian_chunk must be >= 1"),
            (self.cache_size >= 1, "cache_size must be >= 1"),
            (self.force_floor > 0, "force_floor must be > 0"),
            (0 < self.recency_decay <= 1, "recency_decay must be in (0, 1]"),
            (len(self.lambda_grid) > 0 and min(self.lambda_grid) > 0, "lambda_grid must be > 0"),
            (self.cv_rule in ("auto", "min", "one_se"), f"unknown cv_rule {self.cv_rule!r}"),
            (self.single_point_min_lambda >= 0, "single_point_min_lambda must be >= 0"),
            (self.one_point_folds >= 2, "one_point_folds must be >= 2"),
            (self.fixed_lambda is None or self.fixed_lambda > 0, "fixed_lambda must be > 0"),
            (self.epochs >= 0, "epochs must be >= 0"),
            (self.paper_train_on in ("all", "newest"), "paper_train_on: 'all' or 'newest'"),
            (
                self.paper_backend in ("jacobian", "autograd"),
                "paper_backend: 'jacobian' or 'autograd'",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

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


# --------------------------------------------------------------------------- loading


def _safe_numpy_globals() -> list[Any]:
    """The numpy globals SevenNet's checkpoints pickle (plain arrays of numbers)."""
    core = getattr(np, "_core", None) or np.core  # numpy >= 2 / numpy 1.x
    reconstruct = core.multiarray._reconstruct
    allowed: list[Any] = [
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
    ]
    for dt in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_):
        allowed.append(type(np.dtype(dt)))
    return allowed


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` that also accepts numeric numpy arrays."""
    with torch.serialization.safe_globals(_safe_numpy_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def _checkpoint_path(model: str) -> str:
    if os.path.isfile(model):
        return os.path.abspath(model)
    import sevenn.util

    try:
        path = sevenn.util.pretrained_name_to_path(model)
    except Exception as exc:  # sevenn raises plain ValueError/NotImplementedError
        raise ValueError(f"unknown SevenNet model {model!r}: {exc}") from exc
    if not os.path.isfile(path):
        raise ValueError(
            f"SevenNet model {model!r} is not shipped in the installed sevenn wheel "
            f"(expected {path}); only wheel-bundled models load offline, e.g. '7net-0'"
        )
    return path


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_pretrained_sevennet(model: str = "7net-0") -> tuple[torch.nn.Module, dict[str, Any], str]:
    """Build a pre-trained SevenNet model without ``weights_only=False``.

    Returns ``(model, config, checkpoint_path)``; the model is in eval mode, on CPU, with
    ``is_batch_data=False``.
    """
    from sevenn.checkpoint import SevenNetCheckpoint, _config_cp_routine

    class _SafeCheckpoint(SevenNetCheckpoint):
        """sevenn's checkpoint reader with its ``_load`` made weights-only."""

        def _load(self) -> None:
            cp = safe_torch_load(self.checkpoint_path)
            self._config_original = cp.get("config", {})
            self._model_state_dict = cp.get("model_state_dict", {})
            self._optimizer_state_dict = {}
            self._scheduler_state_dict = {}
            self._epoch = cp.get("epoch")
            self._time = str(cp.get("time", "Not found"))
            self._hash = str(cp.get("hash", "Not found"))
            if not self._config_original or not self._model_state_dict:
                raise ValueError(f"{self.checkpoint_path} has no config or model weights")
            self._config = _config_cp_routine(self._config_original)
            self._loaded = True

    path = _checkpoint_path(model)
    checkpoint = _SafeCheckpoint(path)
    config = checkpoint.config
    if config.get("readout_as_fcn", False) or config.get("use_bias_in_linear", False):
        raise NotImplementedError(f"{model!r}: the output head is not two bias-free linears")
    if config.get("use_modality", False):
        raise NotImplementedError(f"{model!r}: multi-fidelity models are not supported")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = checkpoint.build_model()
    net.set_is_batch_data(False)
    net.eval()
    return net, config, path


# --------------------------------------------------------------------------- helpers


@dataclass
class _Graph:
    """Neighbour graph of one structure, positions kept in float64 for precise edges."""

    numbers: torch.Tensor  # (N,) int64
    pos: torch.Tensor  # (N, 3) float64
    src: torch.Tensor  # (E,) int64
    dst: torch.Tensor  # (E,) int64
    shift: torch.Tensor  # (E, 3) float64, Cartesian periodic-image shift

    def edge_vec(self, pos: torch.Tensor) -> torch.Tensor:
        return (pos[self.dst] - pos[self.src] + self.shift).to(torch.float32)


@dataclass
class _PointData:
    """Everything the fits need from one parent point (free-atom rows only)."""

    M: np.ndarray  # (3 n_free, 128): forces = M @ w  (M = -J^T)
    y: np.ndarray  # (3 n_free,): parent forces on free atoms
    n_free: int


def _ridge_path(G: np.ndarray, r: np.ndarray, lams: np.ndarray) -> np.ndarray:
    """Solutions of ``(G + lam I) d = r`` for every lam (rows), via one eigendecomposition."""
    s, V = np.linalg.eigh(G)
    s = np.clip(s, 0.0, None)
    coef = V.T @ r
    out = np.zeros((len(lams), G.shape[0]))
    finite = np.isfinite(lams)
    out[finite] = (coef[None, :] / (s[None, :] + lams[finite, None])) @ V.T
    return out


def _force_mae(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - ref))) if pred.size else float("nan")


# --------------------------------------------------------------------------- surrogate


class SevenNetSurrogate(Surrogate):
    """SevenNet-0 surrogate; fast ridge refit (default) or the paper's recipe.

    Args:
        settings: a :class:`SevenNetSettings`; keyword ``options`` override its fields, so
            ``SevenNetSurrogate(ensemble_size=5)`` works too.
    """

    name = "sevennet"

    def __init__(self, settings: SevenNetSettings | None = None, **options: Any) -> None:
        base = settings.to_plain() if settings is not None else {}
        known = {f.name for f in fields(SevenNetSettings)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown SevenNet option(s): {', '.join(unknown)}")
        self.settings = SevenNetSettings.from_plain(base, **options)
        self.device = self._resolve_device(self.settings.device)

        net, config, path = load_pretrained_sevennet(self.settings.model)
        self._model = net.to(self.device)
        for param in self._model.parameters():
            param.requires_grad_(False)
        self._checkpoint_path = path
        self._checkpoint_sha256: str | None = None
        self.cutoff = float(config["cutoff"])
        self.type_map: dict[int, int] = {int(k): int(v) for k, v in config["_type_map"].items()}

        names = list(self._model._modules.keys())
        for needed in (HEAD_IN, HEAD_OUT, RESCALE):
            if needed not in names:
                raise NotImplementedError(f"model has no {needed!r} module")
        self._backbone = names[: names.index(HEAD_IN)]
        self._head_in = self._model._modules[HEAD_IN].linear.weight
        self._head_out = self._model._modules[HEAD_OUT].linear.weight
        self._scale = self._model._modules[RESCALE].scale
        self._sparse_ok = self._check_sparse_support()
        self._n_feat = int(self._head_in.numel() // self._head_out.numel())
        self._n_hidden = int(self._head_out.numel())
        self._c_in, self._c_out = self._head_normalisation()
        self._pretrained_head = (self._head_in.detach().clone(), self._head_out.detach().clone())
        self.w0 = self.effective_head()

        self._deviations: np.ndarray | None = None  # (K, n_feat) ensemble offsets from w
        self._jac_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        # convolution -> what of its linearisation was checked against e3nn: "edges" (the edge
        # derivative), "all" (also the pair matrices) or "failed" (use e3nn for it)
        self._linearisation_status: dict[int, str] = {}
        self.last_report: FineTuneReport | None = None
        self.reset()

    # ----------------------------------------------------------------- basic plumbing

    @staticmethod
    def _resolve_device(device: str) -> torch.device:
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(device)

    def _head_normalisation(self) -> tuple[float, float]:
        """e3nn's per-layer constants c with ``effective matrix = c * raw.view(in, out)``."""
        lin_in = self._model._modules[HEAD_IN].linear
        lin_out = self._model._modules[HEAD_OUT].linear
        consts = []
        for lin, n_in in ((lin_in, self._n_feat), (lin_out, self._n_hidden)):
            with torch.no_grad():
                eff = lin(torch.eye(n_in, device=self.device)).double().cpu()
            raw = lin.weight.detach().double().cpu().view(n_in, -1)
            c = float((eff * raw).sum() / (raw * raw).sum())
            if not torch.allclose(eff, c * raw, rtol=1e-5, atol=1e-8):
                raise NotImplementedError("unexpected weight layout in the output head")
            consts.append(c)
        return consts[0], consts[1]

    def effective_head(self) -> np.ndarray:
        """The effective 128-vector ``w`` of the two head layers (float64 copy)."""
        A = self._c_in * self._head_in.detach().double().cpu().view(self._n_feat, self._n_hidden)
        b = self._c_out * self._head_out.detach().double().cpu().view(self._n_hidden)
        return (A @ b).numpy()

    def set_effective_head(self, w: np.ndarray) -> None:
        """Write ``w`` into the model so ordinary predictions use it.

        Keeps the second layer ``b`` and applies the minimal (rank-1) change to the first
        layer ``A`` so that ``A' b = w`` exactly: ``A' = A + (w - A b) b^T / |b|^2``.
        """
        w = np.asarray(w, dtype=float).reshape(self._n_feat)
        A = self._c_in * self._head_in.detach().double().cpu().numpy().reshape(self._n_feat, self._n_hidden)
        b = self._c_out * self._head_out.detach().double().cpu().numpy().reshape(self._n_hidden)
        A_new = A + np.outer(w - A @ b, b) / float(b @ b)
        raw = torch.as_tensor(A_new / self._c_in, dtype=self._head_in.dtype)
        with torch.no_grad():
            self._head_in.copy_(raw.reshape(self._head_in.shape).to(self.device))
        err = np.abs(self.effective_head() - w).max()
        if err > 1e-5 * max(1.0, np.abs(w).max()):
            raise RuntimeError(f"writing the head back lost precision ({err:.2e})")

    @property
    def ensemble_size(self) -> int:
        return self.settings.ensemble_size

    @property
    def checkpoint_sha256(self) -> str:
        """sha256 of the pre-trained checkpoint file (computed lazily)."""
        if self._checkpoint_sha256 is None:
            self._checkpoint_sha256 = _file_sha256(self._checkpoint_path)
        return self._checkpoint_sha256

    def _graph(self, atoms: Atoms) -> _Graph:
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        if not isinstance(atoms, Atoms):
            raise TypeError(f"expected ase.Atoms, got {type(atoms).__name__}")
        if len(atoms) == 0:
            raise ValueError("cannot evaluate an empty structure")
        numbers = atoms.get_atomic_numbers()
        unknown = sorted({int(z) for z in numbers if int(z) not in self.type_map})
        if unknown:
            from ase.data import chemical_symbols

            names = [chemical_symbols[z] if 0 <= z < len(chemical_symbols) else str(z) for z in unknown]
            raise ValueError(
                f"SevenNet model {self.settings.model!r} has no parameters for element(s) "
                f"{', '.join(names)} (atomic numbers {unknown})"
            )
        positions = atoms.get_positions()
        if not np.all(np.isfinite(positions)):
            raise ValueError("atomic positions must be finite")
        cell = np.asarray(atoms.get_cell())
        for axis in range(3):
            if atoms.pbc[axis] and np.linalg.norm(cell[axis]) < 1e-8:
                raise ValueError(
                    f"atoms are periodic along axis {axis} but cell vector {axis} is zero; "
                    "set a cell or pbc=False for that axis"
                )
        if atoms.pbc.all() and abs(np.linalg.det(cell)) < 1e-8:
            raise ValueError("periodic cell has zero volume")
        graph = unlabeled_atoms_to_graph(atoms, self.cutoff, with_shift=True)
        edge_index = np.asarray(graph["edge_index"], dtype=np.int64).reshape(2, -1)
        shift = np.asarray(graph["pbc_shift"], dtype=float).reshape(-1, 3) @ np.asarray(
            graph["cell_lattice_vectors"], dtype=float
        ).reshape(3, 3)
        dev = self.device
        return _Graph(
            numbers=torch.as_tensor(numbers, dtype=torch.int64, device=dev),
            pos=torch.as_tensor(positions, dtype=torch.float64, device=dev),
            src=torch.as_tensor(edge_index[0], device=dev),
            dst=torch.as_tensor(edge_index[1], device=dev),
            shift=torch.as_tensor(shift, dtype=torch.float64, device=dev),
        )

    def _node_features(self, g: _Graph, edge_vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen backbone: per-atom 128 scalar features and element (type) indices."""
        import sevenn._keys as KEY

        data: dict[str, Any] = {
            KEY.NODE_FEATURE: self._model._atomic_numbers_to_onehot(g.numbers),
            KEY.ATOMIC_NUMBERS: g.numbers,
            KEY.EDGE_IDX: torch.stack([g.src, g.dst]),
            KEY.EDGE_VEC: edge_vec,
            KEY.NUM_ATOMS: torch.tensor(len(g.numbers), device=self.device),
        }
        for name in self._backbone:
            data = self._model._modules[name](data)
        return data[KEY.NODE_FEATURE], data[KEY.ATOM_TYPE]

    def _atomic_energies(self, h: torch.Tensor, atom_type: torch.Tensor) -> torch.Tensor:
        """The model's own head + rescale modules applied to the features."""
        import sevenn._keys as KEY

        data: dict[str, Any] = {KEY.NODE_FEATURE: h, KEY.ATOM_TYPE: atom_type}
        for name in (HEAD_IN, HEAD_OUT, RESCALE):
            data = self._model._modules[name](data)
        return data[KEY.ATOMIC_ENERGY]

    def _feature_sum(self, h: torch.Tensor, atom_type: torch.Tensor) -> torch.Tensor:
        """S = sum_i scale(z_i) h_i, so that E = S . w + const."""
        return (h * self._scale[atom_type].view(-1, 1)).sum(0)

    # ----------------------------------------------------------------- prediction

    def predict(self, atoms: Atoms) -> Prediction:
        """Energy and forces (ensemble mean) and, with an ensemble, the force spread."""
        g = self._graph(atoms)
        pos = g.pos.clone().requires_grad_(True)
        h, atom_type = self._node_features(g, g.edge_vec(pos))
        energy = self._atomic_energies(h, atom_type).sum()
        if self._deviations is None:
            (grad,) = torch.autograd.grad(energy, pos)
            return Prediction(float(energy.item()), -grad.detach().cpu().numpy(), None)

        dev = torch.as_tensor(self._deviations, dtype=torch.float32, device=self.device)
        s = self._feature_sum(h, atom_type)
        # One backward per output (a loop reusing the graph measured faster than one
        # batched vmap'd backward).  Offsets sum to zero, so the last member's force
        # offset is minus the sum of the others: K backward passes in all.
        outputs = [energy] + [dev[k] @ s for k in range(len(dev) - 1)]
        grads = [torch.autograd.grad(out, pos, retain_graph=i < len(outputs) - 1)[0] for i, out in enumerate(outputs)]
        main = grads[0].detach().double().cpu().numpy()
        offsets = np.stack([g_.detach().double().cpu().numpy() for g_ in grads[1:]])
        offsets = np.concatenate([offsets, -offsets.sum(axis=0, keepdims=True)])
        member_forces = -(main[None] + offsets)  # (K, N, 3)
        member_energy = energy.item() + (dev @ s).detach().double().cpu().numpy()
        mean_forces = member_forces.mean(axis=0)
        spread = np.sqrt(((member_forces - mean_forces) ** 2).sum(axis=2).mean(axis=0))
        return Prediction(float(member_energy.mean()), mean_forces, spread)

    # ----------------------------------------------------------------- Jacobian

    @staticmethod
    def _cache_key(atoms: Atoms, free: np.ndarray) -> str:
        digest = hashlib.sha1()
        for arr in (
            atoms.get_atomic_numbers().astype(np.int64),
            np.ascontiguousarray(atoms.get_positions(), dtype=np.float64),
            np.ascontiguousarray(np.asarray(atoms.get_cell()), dtype=np.float64),
            np.asarray(atoms.pbc, dtype=bool),
            np.asarray(free, dtype=np.int64),
        ):
            digest.update(arr.tobytes())
        return digest.hexdigest()

    def jacobian(self, atoms: Atoms, free: np.ndarray | None = None, mode: JacobianMode | None = None) -> np.ndarray:
        """J = dS/dr restricted to the given atoms' coordinates, shape (128, 3 n_free).

        ``S = sum_i scale(z_i) h_i``; columns are ordered (atom, x/y/z) for the atoms in
        ``free`` (default: the free atoms of ``atoms.constraints``).  Forces on those atoms
        are ``-(J^T w).reshape(-1, 3)``.  Results are cached per structure.
        """
        if free is None:
            free = np.flatnonzero(free_atom_mask(atoms))
        free = np.asarray(free, dtype=np.int64)
        mode = mode or self.settings.jacobian_mode
        key = self._cache_key(atoms, free) + mode
        hit = self._jac_cache.get(key)
        if hit is not None:
            self._jac_cache.move_to_end(key)
            return hit
        g = self._graph(atoms)
        if len(free) == 0:
            jac = np.zeros((self._n_feat, 0))
        elif mode == "sparse" and self._sparse_ok and len(g.numbers) * len(g.src) <= 5e7:
            jac = self._jacobian_sparse(g, free)
        elif mode in ("sparse", "forward"):
            jac = self._jacobian_forward(g, free)
        elif mode == "reverse":
            jac = self._jacobian_reverse(g, free, batched=True)
        elif mode == "reverse_loop":
            jac = self._jacobian_reverse(g, free, batched=False)
        else:
            raise ValueError(f"unknown jacobian mode {mode!r}")
        jac.setflags(write=False)
        self._jac_cache[key] = jac
        while len(self._jac_cache) > self.settings.cache_size:
            self._jac_cache.popitem(last=False)
        return jac

    def _jacobian_forward(self, g: _Graph, free: np.ndarray) -> np.ndarray:
        """Forward-mode AD: one JVP per free coordinate, vmapped in chunks."""
        free_t = torch.as_tensor(free, device=self.device)
        # d(edge_vec)/d(r_a,c) = e_c * ([dst == a] - [src == a])
        incidence = (g.dst[None, :] == free_t[:, None]).float() - (
            g.src[None, :] == free_t[:, None]
        ).float()  # (n_free, E)
        eye = torch.eye(3, device=self.device)
        tangents = (incidence[:, None, :, None] * eye[None, :, None, :]).reshape(3 * len(free), -1, 3)
        edge_vec = g.edge_vec(g.pos)

        def feature_sum(ev: torch.Tensor) -> torch.Tensor:
            return self._feature_sum(*self._node_features(g, ev))

        def column(t: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(feature_sum, (edge_vec,), (t,))[1]

        with torch.no_grad():
            cols = torch.func.vmap(column, chunk_size=min(self.settings.jacobian_chunk, 16))(tangents)
        return cols.T.double().cpu().numpy().copy()

    def _check_sparse_support(self) -> bool:
        """The sparse mode needs convolutions to be the only consumers of edge geometry."""
        from sevenn.nn.convolution import IrrepsConvolution
        from sevenn.nn.edge_embedding import EdgeEmbedding
        from sevenn.nn.equivariant_gate import EquivariantGate
        from sevenn.nn.linear import IrrepsLinear
        from sevenn.nn.node_embedding import OnehotEmbedding
        from sevenn.nn.self_connection import (
            SelfConnectionIntro,
            SelfConnectionLinearIntro,
            SelfConnectionOutro,
        )

        known = (
            IrrepsConvolution,
            EdgeEmbedding,
            EquivariantGate,
            IrrepsLinear,
            OnehotEmbedding,
            SelfConnectionIntro,
            SelfConnectionLinearIntro,
            SelfConnectionOutro,
        )
        modules = [self._model._modules[name] for name in self._backbone]
        return all(type(m) in known for m in modules) and isinstance(modules[0], EdgeEmbedding)

    def _jacobian_sparse(self, g: _Graph, free: np.ndarray) -> np.ndarray:
        """Forward mode with the edge-geometry part of each convolution applied sparsely.

        A convolution's messages ``m_e = TP(x_src(e), Y(r_e), W(|r_e|))`` change with an
        atom's position through the node features ``x`` (dense) and through the geometry of
        the edges touching that atom only.  So per layer we compute, once, the derivative of
        every message w.r.t. its own edge vector, ``D[c, e] = dm_e/dr_e,c``, and for each free
        coordinate add ``+-D`` on its incident edges; the dense ``TP(dx_src, Y, W)`` term is
        a fixed linear map of the node tangents (pair matrices, or e3nn per tangent when
        they would exceed ``jacobian_memory_mb``).  Exact.
        """
        import sevenn._keys as KEY
        from sevenn.nn.convolution import IrrepsConvolution
        from sevenn.nn.edge_embedding import EdgeEmbedding

        modules = self._model._modules
        node_keys = (KEY.NODE_FEATURE, KEY.SELF_CONNECTION_TEMP)
        dev = self.device
        n_atoms, n_tan = len(g.numbers), 3 * len(free)
        edge_vec = g.edge_vec(g.pos)
        edge_index = torch.stack([g.src, g.dst])
        # tangent of edge e for coordinate (free[j], c): +1 if dst == atom, -1 if src == atom
        pair_j, pair_e, pair_sign = [], [], []
        for j, atom in enumerate(free):
            for sign, hits in ((1.0, g.dst == int(atom)), (-1.0, g.src == int(atom))):
                e = torch.nonzero(hits).view(-1)
                pair_j.append(torch.full_like(e, j))
                pair_e.append(e)
                pair_sign.append(torch.full((len(e),), sign, device=dev))
        pj, pe, ps = torch.cat(pair_j), torch.cat(pair_e), torch.cat(pair_sign)

        data: dict[str, Any] = {
            KEY.NODE_FEATURE: self._model._atomic_numbers_to_onehot(g.numbers),
            KEY.ATOMIC_NUMBERS: g.numbers,
            KEY.EDGE_IDX: edge_index,
            KEY.EDGE_VEC: edge_vec,
            KEY.NUM_ATOMS: torch.tensor(n_atoms, device=dev),
        }
        records: list[tuple[dict[str, Any], list[str]]] = []
        geo: list[torch.Tensor] = []
        conv_maps: list[Callable[[torch.Tensor], torch.Tensor]] = []
        embed = next(m for m in modules.values() if isinstance(m, EdgeEmbedding))
        with torch.no_grad():
            for name in self._backbone:
                mod = modules[name]
                rec = dict(data)
                if isinstance(mod, IrrepsConvolution):
                    x_src = rec[KEY.NODE_FEATURE][g.dst]
                    dmsg, tangent_map = self._linearise_convolution(mod, embed, edge_vec, x_src, rec, g)
                    dim = dmsg.shape[-1]
                    out = torch.zeros(n_tan * n_atoms, dim, device=dev)
                    for c in range(3):
                        rows = (3 * pj + c) * n_atoms + g.src[pe]
                        out.index_add_(0, rows, ps[:, None] * dmsg[c, pe])
                    geo.append((out / mod.denominator).view(n_tan, n_atoms, dim))
                    conv_maps.append(tangent_map)
                data = mod(dict(rec))
                records.append((rec, [k for k in node_keys if k in data]))
            atom_type = data[KEY.ATOM_TYPE]

        def propagate(geo_t: list[torch.Tensor]) -> torch.Tensor:
            """Feature tangents for a batch of coordinate tangents (leading dim)."""
            tangents: dict[str, torch.Tensor] = {}
            layer = 0
            for name, (rec, out_keys) in zip(self._backbone, records, strict=True):
                mod = modules[name]
                if isinstance(mod, EdgeEmbedding):
                    continue
                if isinstance(mod, IrrepsConvolution):
                    out = geo_t[layer]
                    if KEY.NODE_FEATURE in tangents:  # conv is linear in x for fixed edges
                        out = out + conv_maps[layer](tangents[KEY.NODE_FEATURE])
                    tangents[KEY.NODE_FEATURE] = out
                    layer += 1
                    continue
                if not tangents:
                    continue
                if self._is_linear_node_module(mod):  # its tangent is the module itself, batched
                    n_batch = next(iter(tangents.values())).shape[0]
                    d = {k: rec[k].new_zeros(()).expand(n_batch, *rec[k].shape) for k in node_keys if k in rec}
                    d.update(tangents)  # a feature without a tangent yet has tangent zero
                    out_d = mod(d)
                    tangents = {k: out_d[k] for k in out_keys}
                    continue
                keys = [k for k in node_keys if k in tangents]

                def node_fn(
                    *vals: torch.Tensor, mod: Any = mod, rec: Any = rec, keys: Any = keys, out_keys: Any = out_keys
                ) -> tuple[torch.Tensor, ...]:
                    d = dict(rec)
                    d.update(zip(keys, vals, strict=True))
                    out_d = mod(d)
                    return tuple(out_d[k] for k in out_keys)

                def node_jvp(*tan: torch.Tensor, node_fn: Any = node_fn, keys: Any = keys, rec: Any = rec) -> Any:
                    return torch.func.jvp(node_fn, tuple(rec[k] for k in keys), tan)[1]

                tan_out = torch.func.vmap(node_jvp)(*(tangents[k] for k in keys))
                tangents = dict(zip(out_keys, tan_out, strict=True))
            return tangents[KEY.NODE_FEATURE]

        chunk = self.settings.jacobian_chunk
        with torch.no_grad():
            dh = torch.cat([propagate([t[i : i + chunk] for t in geo]) for i in range(0, n_tan, chunk)])
            cols = (dh * self._scale[atom_type].view(1, -1, 1)).sum(1)  # (3 n_free, 128)
        return cols.T.double().cpu().numpy().copy()

    @staticmethod
    def _is_linear_node_module(mod: Any) -> bool:
        """Bias-free linear layers and the residual sum: tangents pass through them as inputs do."""
        from sevenn.nn.linear import IrrepsLinear
        from sevenn.nn.self_connection import SelfConnectionLinearIntro, SelfConnectionOutro

        if type(mod) is SelfConnectionOutro:
            return True
        if type(mod) is IrrepsLinear and getattr(mod, "num_modalities", 1) > 1:
            return False
        if type(mod) in (IrrepsLinear, SelfConnectionLinearIntro):
            bias = getattr(mod.linear, "bias", None)
            return bias is None or bias.numel() == 0
        return False

    def _linearise_convolution(
        self, mod: Any, embed: Any, edge_vec: torch.Tensor, x_src: torch.Tensor, rec: dict[str, Any], g: _Graph
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """One convolution's ``d m_e / d r_e`` (3, E, dim) and its batched node-tangent map.

        Uses :mod:`.conv_linearisation` (checked against the tensor product the first time
        per module); falls back to JVPs through e3nn when that does not apply.
        """
        import sevenn._keys as KEY

        tp, n_atoms = mod.convolution, len(g.numbers)
        attr, weight = rec[KEY.EDGE_ATTR], mod.weight_nn(rec[KEY.EDGE_EMBEDDING])
        unit = torch.eye(3, device=self.device)[:, None, :].expand(3, len(g.src), 3).contiguous()

        def geometry(ev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            emb = embed({KEY.EDGE_VEC: ev})
            return emb[KEY.EDGE_ATTR], mod.weight_nn(emb[KEY.EDGE_EMBEDDING])

        def message(ev: torch.Tensor) -> torch.Tensor:
            ev_attr, ev_weight = geometry(ev)
            return tp(x_src, ev_attr, ev_weight)

        def per_tangent(dx: torch.Tensor) -> torch.Tensor:
            msg = tp(dx[g.dst], attr, weight)
            return msg.new_zeros(n_atoms, msg.shape[-1]).index_add(0, g.src, msg) / mod.denominator

        def message_derivative() -> torch.Tensor:
            return torch.func.vmap(lambda t: torch.func.jvp(message, (edge_vec,), (t,))[1])(unit)

        e3nn_map = torch.func.vmap(per_tangent)
        status = self._linearisation_status.get(id(mod))
        lin = None
        if status != "failed":
            d_attr, d_weight = torch.func.vmap(lambda t: torch.func.jvp(geometry, (edge_vec,), (t,))[1])(unit)
            dense = pair_operator_floats(tp, n_atoms) <= self.settings.jacobian_memory_mb * 2**20 / 4
            lin = linearise(tp, x_src, attr, weight, d_attr, d_weight, g.src, g.dst, n_atoms, mod.denominator, dense)
            reached = None if lin is None else ("all" if lin.pair_operator is not None else "edges")
            unchecked = reached is not None and status not in (reached, "all")
            if unchecked and not self._linearisation_matches(lin, message_derivative, e3nn_map, x_src):
                warnings.warn("convolution linearisation disagrees with e3nn; using JVPs for it", stacklevel=2)
                lin = reached = None
            if reached is None or status != "all":
                self._linearisation_status[id(mod)] = reached or "failed"
        if lin is None:
            return message_derivative(), e3nn_map
        return lin.edge_derivative, lin.pair_operator or e3nn_map

    def _linearisation_matches(self, lin: Linearisation, message_derivative: Callable[[], torch.Tensor],
                               e3nn_map: Callable[[torch.Tensor], torch.Tensor], x_src: torch.Tensor) -> bool:
        def close(a: torch.Tensor, b: torch.Tensor) -> bool:
            return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(b.abs().max()))))

        if not close(lin.edge_derivative, message_derivative()):
            return False
        if lin.pair_operator is None:
            return True
        n_atoms = lin.pair_operator.n_atoms
        dx = torch.randn(2, n_atoms, x_src.shape[1], generator=torch.Generator().manual_seed(0)).to(x_src)
        return close(lin.pair_operator(dx), e3nn_map(dx))

    def _jacobian_reverse(self, g: _Graph, free: np.ndarray, batched: bool) -> np.ndarray:
        """Reverse mode: 128 vector-Jacobian products (batched with vmap, or a loop)."""
        pos = g.pos.clone().requires_grad_(True)
        s = self._feature_sum(*self._node_features(g, g.edge_vec(pos)))
        if batched:
            eye = torch.eye(self._n_feat, dtype=s.dtype, device=self.device)
            rows = torch.autograd.grad(s, pos, eye, is_grads_batched=True)[0]
        else:
            rows = torch.stack([torch.autograd.grad(s[k], pos, retain_graph=True)[0] for k in range(len(s))])
        rows = rows[:, torch.as_tensor(free, device=self.device)]  # (128, n_free, 3)
        return rows.reshape(self._n_feat, -1).double().cpu().numpy().copy()

    def precompute(self, points: Sequence[LabelledPoint | Atoms]) -> float:
        """Fill the Jacobian cache for ``points`` ahead of :meth:`fine_tune`; returns seconds.

        The learner may call this while the parent computes, so the next fine-tune only
        solves the small regression.
        """
        start = time.perf_counter()
        for point in points:
            atoms = point.atoms if isinstance(point, LabelledPoint) else point
            self.jacobian(atoms)
        return time.perf_counter() - start

    def _point_data(self, point: LabelledPoint) -> _PointData:
        free = np.flatnonzero(point.free_mask)
        jac = self.jacobian(point.atoms, free)
        return _PointData(M=-jac.T, y=point.forces[free].reshape(-1), n_free=len(free))

    # ----------------------------------------------------------------- fine-tuning

    def fine_tune(self, points: Sequence[LabelledPoint]) -> FineTuneReport:
        """Fine-tune on ALL ``points`` (oldest first) with ``settings.method``."""
        start = time.perf_counter()
        points = list(points)
        if not points:
            raise ValueError("fine_tune needs at least one LabelledPoint")
        for point in points:
            if not isinstance(point, LabelledPoint):
                raise TypeError(f"expected LabelledPoint, got {type(point).__name__}")
        usable = [p for p in points if p.free_mask.any()]
        if not usable:
            raise ValueError("no point has free atoms: nothing to fit")

        t_jac = time.perf_counter()
        n_cached = len(self._jac_cache)
        data = [self._point_data(p) for p in usable]
        seconds_jacobian = time.perf_counter() - t_jac
        details: dict[str, Any] = {
            "seconds_jacobian": seconds_jacobian,
            "new_jacobians": max(0, len(self._jac_cache) - n_cached),
            "skipped_points_without_free_atoms": len(points) - len(usable),
        }
        w_before = self.effective_head()
        details["train_mae_before"] = self._train_mae(data, w_before)

        if self.settings.method == "ridge":
            weights = self._point_weights(data)
            details.update(self._fit_ridge(data, weights))
        else:
            details.update(self._fit_paper(usable, data))
        if self.ensemble_size > 1:
            weights = self._point_weights(data)
            lam = details.get("lambda_abs")
            if lam is None:  # paper method: regularisation of the bootstrap heads from CV
                lam = self._solve_ridge(data, weights)[1]["lambda_abs"]
            if not np.isfinite(lam):
                lam = self._fallback_lambda(data, weights)
            self._deviations = self._bootstrap_deviations(data, weights, float(lam))
            details["ensemble_lambda_abs"] = float(lam)
        details["train_mae_after"] = self._train_mae(data, self.effective_head())
        report = FineTuneReport(
            method=self.settings.method,
            n_points=len(usable),
            seconds=time.perf_counter() - start,
            details=details,
        )
        self.last_report = report
        return report

    @staticmethod
    def _train_mae(data: Sequence[_PointData], w: np.ndarray) -> float:
        return float(np.mean([_force_mae(d.M @ w, d.y) for d in data]))

    def _point_weights(self, data: Sequence[_PointData]) -> np.ndarray:
        """Per-point weights c_p of the squared-error loss (see settings)."""
        s = self.settings
        n = len(data)
        weights = np.empty(n)
        for p, d in enumerate(data):
            c = 1.0 / len(d.y)
            if s.relative_weighting:
                c /= float(np.mean(d.y**2)) + s.force_floor**2
            weights[p] = c * s.recency_decay ** (n - 1 - p)
        return weights

    def _lambda_ref(self, data: Sequence[_PointData], weights: np.ndarray) -> float:
        trace = sum(c * float(np.sum(d.M**2)) for d, c in zip(data, weights, strict=True))
        return max(trace / self._n_feat, 1e-30)

    def _fallback_lambda(self, data: Sequence[_PointData], weights: np.ndarray) -> float:
        """Largest finite grid value: used for ensemble spread when CV kept w0."""
        return max(self.settings.lambda_grid) * self._lambda_ref(data, weights)

    def _fit_ridge(self, data: Sequence[_PointData], weights: np.ndarray) -> dict[str, Any]:
        """Ridge toward w0 with lambda from CV, written into the model."""
        w, details = self._solve_ridge(data, weights)
        self.set_effective_head(w)
        return details

    def _solve_ridge(self, data: Sequence[_PointData], weights: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Ridge toward w0 with lambda from CV over points (or over atoms for one point).

        Minimises ``sum_p c_p |M_p w - y_p|^2 + lam |w - w0|^2``; ``lam = rel * trace(G)/128``
        with ``rel`` picked by leave-one-point-out CV (>= 2 points) or K-fold CV over the
        free atoms (1 point).  Returns the new ``w`` and the details of the choice.
        """
        s = self.settings
        w0 = self.w0
        ref = self._lambda_ref(data, weights)
        # blocks for CV: (M, residual, weight)
        blocks: list[tuple[np.ndarray, np.ndarray, float]] = []
        if len(data) >= 2:
            cv_mode = "leave-one-point-out"
            for d, c in zip(data, weights, strict=True):
                blocks.append((d.M, d.y - d.M @ w0, float(c)))
        else:
            d, c = data[0], float(weights[0])
            n_folds = min(s.one_point_folds, d.n_free)
            cv_mode = f"{n_folds}-fold over free atoms" if n_folds >= 2 else "none"
            rng = np.random.default_rng(s.seed)
            fold_of_atom = rng.permutation(np.arange(d.n_free) % max(n_folds, 1))
            rows = np.repeat(fold_of_atom, 3)
            for f in range(max(n_folds, 1)):
                sel = rows == f
                blocks.append((d.M[sel], d.y[sel] - d.M[sel] @ w0, c))

        G = sum(c * M.T @ M for M, _, c in blocks)
        r = sum(c * M.T @ res for M, res, c in blocks)
        details: dict[str, Any] = {"cv_mode": cv_mode, "lambda_ref": ref}

        if s.fixed_lambda is not None:
            rel = float(s.fixed_lambda)
            details["cv"] = None
        elif cv_mode == "none":
            rel = float("inf")  # cannot validate a change: keep the pre-trained head
            details["cv"] = None
        else:
            grid = np.array(sorted(s.lambda_grid) + [np.inf])
            if len(data) == 1:
                floor = s.single_point_min_lambda
                grid = np.unique(np.concatenate([[floor] if floor > 0 else [], grid[grid >= floor]]))
            lams = grid * ref
            errors = np.zeros((len(blocks), len(grid)))
            for i, (M_b, res_b, c_b) in enumerate(blocks):
                G_b = M_b.T @ M_b
                r_b = M_b.T @ res_b
                deltas = _ridge_path(G - c_b * G_b, r - c_b * r_b, lams)
                quad = np.einsum("li,ij,lj->l", deltas, G_b, deltas)
                errors[i] = c_b * (float(res_b @ res_b) - 2 * deltas @ r_b + quad)
            total = errors.sum(axis=0)
            best = int(np.argmin(total))
            choice = best
            rule = s.cv_rule if s.cv_rule != "auto" else ("min" if len(data) >= 2 else "one_se")
            if rule == "one_se" and len(blocks) > 1:
                se = float(np.std(errors[:, best], ddof=1) * np.sqrt(len(blocks)))
                within = np.flatnonzero(total <= total[best] + se)
                choice = int(within.max())  # strongest regularisation within 1 SE
            rel = float(grid[choice])
            details["cv"] = {
                "lambda_rel": [float(x) for x in grid],
                "error": [float(x) for x in total],
                "best_rel": float(grid[best]),
            }

        lam = rel * ref
        if np.isfinite(lam):
            delta = _ridge_path(G, r, np.array([lam]))[0]
        else:
            delta = np.zeros_like(w0)
        details.update(
            {
                "lambda_rel": rel,
                "lambda_abs": lam,
                "kept_pretrained": not np.isfinite(lam),
                "delta_norm_rel": float(np.linalg.norm(delta) / np.linalg.norm(w0)),
            }
        )
        return w0 + delta, details

    def _bootstrap_deviations(self, data: Sequence[_PointData], weights: np.ndarray, lam: float) -> np.ndarray:
        """K ridge fits on bootstrap resamples of the free atoms; offsets from their mean."""
        K = self.ensemble_size
        rng = np.random.default_rng(self.settings.seed + 7919 * len(data))
        w0 = self.w0
        deltas = np.zeros((K, self._n_feat))
        for k in range(K):
            G = lam * np.eye(self._n_feat)
            r = np.zeros(self._n_feat)
            for d, c in zip(data, weights, strict=True):
                counts = rng.multinomial(d.n_free, np.full(d.n_free, 1.0 / d.n_free))
                row_w = np.repeat(counts, 3).astype(float)
                Mw = d.M * row_w[:, None]
                G += c * Mw.T @ d.M
                r += c * Mw.T @ (d.y - d.M @ w0)
            deltas[k] = np.linalg.solve(G, r)
        return deltas - deltas.mean(axis=0)

    # paper recipe -----------------------------------------------------------------

    def _fit_paper(self, points: Sequence[LabelledPoint], data: Sequence[_PointData]) -> dict[str, Any]:
        s = self.settings
        if s.paper_train_on == "newest":
            points, data = points[-1:], data[-1:]
        if s.paper_backend == "jacobian":
            return self._fit_paper_jacobian(data)
        return self._fit_paper_autograd(points)

    def _paper_optimiser(
        self, params: list[torch.Tensor]
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau]:
        s = self.settings
        opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay, amsgrad=s.amsgrad)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=s.plateau_factor, patience=s.plateau_patience
        )
        return opt, sched

    def _run_epochs(
        self,
        n_items: int,
        step_loss: Callable[[int], torch.Tensor],
        params: list[torch.Tensor],
    ) -> dict[str, Any]:
        s = self.settings
        opt, sched = self._paper_optimiser(params)
        rng = np.random.default_rng(s.seed)
        history: list[float] = []
        for _ in range(s.epochs):
            losses = []
            for i in rng.permutation(n_items):
                opt.zero_grad(set_to_none=True)
                loss = step_loss(int(i))
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            history.append(float(np.mean(losses)))
            sched.step(history[-1])
        return {
            "epochs": s.epochs,
            "loss_first_epoch": history[0] if history else None,
            "loss_last_epoch": history[-1] if history else None,
            "final_lr": float(opt.param_groups[0]["lr"]),
        }

    def _fit_paper_jacobian(self, data: Sequence[_PointData]) -> dict[str, Any]:
        """The paper's optimisation on F = M (c_in A_raw)(c_out b_raw), using cached J."""
        s = self.settings
        A = self._head_in.detach().double().cpu().view(self._n_feat, self._n_hidden).clone()
        b = self._head_out.detach().double().cpu().view(self._n_hidden).clone()
        A.requires_grad_(True)
        b.requires_grad_(True)
        Ms = [torch.as_tensor(d.M) for d in data]
        ys = [torch.as_tensor(d.y) for d in data]
        c = self._c_in * self._c_out

        def step_loss(i: int) -> torch.Tensor:
            forces = Ms[i] @ (c * (A @ b))
            return s.force_loss_weight * torch.mean((forces - ys[i]) ** 2)

        t0 = time.perf_counter()
        details = self._run_epochs(len(data), step_loss, [A, b])
        with torch.no_grad():
            self._head_in.copy_(A.detach().reshape(self._head_in.shape).to(self._head_in))
            self._head_out.copy_(b.detach().reshape(self._head_out.shape).to(self._head_out))
        details.update({"backend": "jacobian", "seconds_train": time.perf_counter() - t0})
        return details

    def _fit_paper_autograd(self, points: Sequence[LabelledPoint]) -> dict[str, Any]:
        """The paper's optimisation through the network (force loss via double backward)."""
        s = self.settings
        graphs = [self._graph(p.atoms) for p in points]
        frees = [torch.as_tensor(np.flatnonzero(p.free_mask), device=self.device) for p in points]
        targets = [
            torch.tensor(np.array(p.forces), dtype=torch.float32, device=self.device)[f]
            for p, f in zip(points, frees, strict=True)
        ]
        params = [self._head_in, self._head_out]

        def step_loss(i: int) -> torch.Tensor:
            g = graphs[i]
            pos = g.pos.clone().requires_grad_(True)
            h, atom_type = self._node_features(g, g.edge_vec(pos))
            energy = self._atomic_energies(h, atom_type).sum()
            (grad,) = torch.autograd.grad(energy, pos, create_graph=True)
            forces = -grad[frees[i]].to(torch.float32)
            return s.force_loss_weight * torch.mean((forces - targets[i]) ** 2)

        t0 = time.perf_counter()
        for p in params:
            p.requires_grad_(True)
        try:
            details = self._run_epochs(len(points), step_loss, params)
        finally:
            for p in params:
                p.requires_grad_(False)
        details.update({"backend": "autograd", "seconds_train": time.perf_counter() - t0})
        return details

    # ----------------------------------------------------------------- state

    def reset(self) -> None:
        """Back to the pre-trained head; ensemble offsets zero (Jacobian cache kept)."""
        with torch.no_grad():
            self._head_in.copy_(self._pretrained_head[0])
            self._head_out.copy_(self._pretrained_head[1])
        self._deviations = np.zeros((self.ensemble_size, self._n_feat)) if self.ensemble_size > 1 else None
        self.last_report = None

    def clear_cache(self) -> None:
        """Drop all cached Jacobians."""
        self._jac_cache.clear()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save settings and head weights as plain tensors (loadable with weights_only)."""
        state = {
            "format": SAVE_FORMAT,
            "settings": self.settings.to_plain(),
            "pretrained_sha256": self.checkpoint_sha256,
            "head_in_weight": self._head_in.detach().cpu().clone(),
            "head_out_weight": self._head_out.detach().cpu().clone(),
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
                f"{path} was fine-tuned from a different pre-trained checkpoint than {surrogate._checkpoint_path}"
            )
        head_in, head_out = state["head_in_weight"], state["head_out_weight"]
        if head_in.shape != surrogate._head_in.shape or head_out.shape != surrogate._head_out.shape:
            raise ValueError(f"{path}: head weight shapes do not match the model")
        with torch.no_grad():
            surrogate._head_in.copy_(head_in)
            surrogate._head_out.copy_(head_out)
        deviations = state.get("deviations")
        if deviations is not None:
            deviations = deviations.numpy()
            if deviations.shape != (settings.ensemble_size, surrogate._n_feat):
                raise ValueError(f"{path}: ensemble offsets do not match ensemble_size")
        elif settings.ensemble_size > 1:
            deviations = np.zeros((settings.ensemble_size, surrogate._n_feat))
        surrogate._deviations = deviations
        return surrogate
