"""A pre-trained SevenNet model as a frozen backbone plus its two-layer linear head.

SevenNet-0 ends with two bias-free linear layers, ``reduce_input_to_hidden`` (128 -> 64) and
``reduce_hidden_to_energy`` (64 -> 1), with no nonlinearity between them, followed by a frozen
per-element ``scale * e + shift``.  With ``h_i`` the 128 scalar features of atom ``i`` from the
backbone, the total energy is

    E = sum_i scale(z_i) h_i . w + sum_i shift(z_i) = S . w + const,    w = A @ b,

so the forces ``F = -J^T w`` (``J = dS/dr``) are exactly linear in the effective 128-vector
``w`` of the two layers.  This module builds neighbour graphs, runs the backbone and the head,
and reads and writes ``w``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ase import Atoms

from .checkpoint import load_pretrained_sevennet

__all__ = ["Graph", "HeadNetwork"]

HEAD_IN = "reduce_input_to_hidden"
HEAD_OUT = "reduce_hidden_to_energy"
RESCALE = "rescale_atomic_energy"


@dataclass(frozen=True)
class Graph:
    """Neighbour graph of one structure, positions kept in float64 for precise edges."""

    numbers: torch.Tensor  # (N,) int64
    pos: torch.Tensor  # (N, 3) float64
    src: torch.Tensor  # (E,) int64
    dst: torch.Tensor  # (E,) int64
    shift: torch.Tensor  # (E, 3) float64, Cartesian periodic-image shift

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return len(self.numbers)

    def edge_vec(self, pos: torch.Tensor) -> torch.Tensor:
        """Edge vectors (float32, as the model takes them) for positions ``pos``."""
        return (pos[self.dst] - pos[self.src] + self.shift).to(torch.float32)


def _check_structure(atoms: Atoms, type_map: dict[int, int], model: str) -> None:
    """Clear errors for structures the model cannot evaluate."""
    if not isinstance(atoms, Atoms):
        raise TypeError(f"expected ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise ValueError("cannot evaluate an empty structure")
    unknown = sorted({int(z) for z in atoms.get_atomic_numbers() if int(z) not in type_map})
    if unknown:
        from ase.data import chemical_symbols

        names = [chemical_symbols[z] if 0 <= z < len(chemical_symbols) else str(z) for z in unknown]
        raise ValueError(
            f"SevenNet model {model!r} has no parameters for element(s) "
            f"{', '.join(names)} (atomic numbers {unknown})"
        )
    if not np.all(np.isfinite(atoms.get_positions())):
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


class HeadNetwork:
    """A frozen SevenNet backbone and the two linear head layers that fine-tuning changes.

    Attributes:
        module: the sevenn model (all parameters frozen; the head is changed in place).
        head_in, head_out: the raw weights of the two head layers.
        scale: the per-element energy scale after the head.
        backbone: names of the modules before the head, in order.
        n_features, n_hidden: sizes of the head (128 and 64 for SevenNet-0).
    """

    def __init__(self, model: str, device: torch.device) -> None:
        net, config, path = load_pretrained_sevennet(model)
        self.model_name = model
        self.device = device
        self.checkpoint_path = path
        self.module = net.to(device)
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.cutoff = float(config["cutoff"])
        self.type_map: dict[int, int] = {int(k): int(v) for k, v in config["_type_map"].items()}

        modules = self.module._modules
        names = list(modules.keys())
        for needed in (HEAD_IN, HEAD_OUT, RESCALE):
            if needed not in names:
                raise NotImplementedError(f"model has no {needed!r} module")
        self.backbone: tuple[str, ...] = tuple(names[: names.index(HEAD_IN)])
        self.head_in: torch.Tensor = modules[HEAD_IN].linear.weight
        self.head_out: torch.Tensor = modules[HEAD_OUT].linear.weight
        self.scale: torch.Tensor = modules[RESCALE].scale
        self.n_features = int(self.head_in.numel() // self.head_out.numel())
        self.n_hidden = int(self.head_out.numel())
        self._c_in, self._c_out = self._head_normalisation()

    def backbone_modules(self) -> Iterator[tuple[str, Any]]:
        """``(name, module)`` of the backbone, in order."""
        for name in self.backbone:
            yield name, self.module._modules[name]

    def _head_normalisation(self) -> tuple[float, float]:
        """e3nn's per-layer constants c with ``effective matrix = c * raw.view(in, out)``."""
        lin_in = self.module._modules[HEAD_IN].linear
        lin_out = self.module._modules[HEAD_OUT].linear
        consts = []
        for lin, n_in in ((lin_in, self.n_features), (lin_out, self.n_hidden)):
            with torch.no_grad():
                eff = lin(torch.eye(n_in, device=self.device)).double().cpu()
            raw = lin.weight.detach().double().cpu().view(n_in, -1)
            c = float((eff * raw).sum() / (raw * raw).sum())
            if not torch.allclose(eff, c * raw, rtol=1e-5, atol=1e-8):
                raise NotImplementedError("unexpected weight layout in the output head")
            consts.append(c)
        return consts[0], consts[1]

    @property
    def head_scale(self) -> float:
        """``c`` with ``w = c * A_raw @ b_raw``: the product of the two layers' constants."""
        return self._c_in * self._c_out

    # ----------------------------------------------------------------- head weights

    def head_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the raw head weights ``(head_in, head_out)``."""
        return self.head_in.detach().clone(), self.head_out.detach().clone()

    def load_head(self, head_in: torch.Tensor, head_out: torch.Tensor) -> None:
        """Overwrite the raw head weights (sizes must match; they are reshaped to the model's)."""
        if head_in.numel() != self.head_in.numel() or head_out.numel() != self.head_out.numel():
            raise ValueError("head weight shapes do not match the model")
        with torch.no_grad():
            self.head_in.copy_(head_in.reshape(self.head_in.shape).to(self.head_in))
            self.head_out.copy_(head_out.reshape(self.head_out.shape).to(self.head_out))

    def effective_head(self) -> np.ndarray:
        """The effective 128-vector ``w`` of the two head layers (float64 copy)."""
        A = self._c_in * self.head_in.detach().double().cpu().view(self.n_features, self.n_hidden)
        b = self._c_out * self.head_out.detach().double().cpu().view(self.n_hidden)
        return (A @ b).numpy()

    def set_effective_head(self, w: np.ndarray) -> None:
        """Write ``w`` into the model so ordinary predictions use it.

        Keeps the second layer ``b`` and applies the minimal (rank-1) change to the first
        layer ``A`` so that ``A' b = w`` exactly: ``A' = A + (w - A b) b^T / |b|^2``.
        """
        w = np.asarray(w, dtype=float).reshape(self.n_features)
        A = self._c_in * self.head_in.detach().double().cpu().numpy().reshape(self.n_features, self.n_hidden)
        b = self._c_out * self.head_out.detach().double().cpu().numpy().reshape(self.n_hidden)
        A_new = A + np.outer(w - A @ b, b) / float(b @ b)
        raw = torch.as_tensor(A_new / self._c_in, dtype=self.head_in.dtype)
        with torch.no_grad():
            self.head_in.copy_(raw.reshape(self.head_in.shape).to(self.device))
        err = np.abs(self.effective_head() - w).max()
        if err > 1e-5 * max(1.0, np.abs(w).max()):
            raise RuntimeError(f"writing the head back lost precision ({err:.2e})")

    # ----------------------------------------------------------------- evaluation

    def graph(self, atoms: Atoms) -> Graph:
        """Neighbour graph of ``atoms`` within the model's cutoff (checks the input first)."""
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        _check_structure(atoms, self.type_map, self.model_name)
        graph = unlabeled_atoms_to_graph(atoms, self.cutoff, with_shift=True)
        edge_index = np.asarray(graph["edge_index"], dtype=np.int64).reshape(2, -1)
        shift = np.asarray(graph["pbc_shift"], dtype=float).reshape(-1, 3) @ np.asarray(
            graph["cell_lattice_vectors"], dtype=float
        ).reshape(3, 3)
        dev = self.device
        return Graph(
            numbers=torch.as_tensor(atoms.get_atomic_numbers(), dtype=torch.int64, device=dev),
            pos=torch.as_tensor(atoms.get_positions(), dtype=torch.float64, device=dev),
            src=torch.as_tensor(edge_index[0], device=dev),
            dst=torch.as_tensor(edge_index[1], device=dev),
            shift=torch.as_tensor(shift, dtype=torch.float64, device=dev),
        )

    def input_data(self, graph: Graph, edge_vec: torch.Tensor) -> dict[str, Any]:
        """The data dict the first backbone module takes."""
        import sevenn._keys as KEY

        return {
            KEY.NODE_FEATURE: self.module._atomic_numbers_to_onehot(graph.numbers),
            KEY.ATOMIC_NUMBERS: graph.numbers,
            KEY.EDGE_IDX: torch.stack([graph.src, graph.dst]),
            KEY.EDGE_VEC: edge_vec,
            KEY.NUM_ATOMS: torch.tensor(graph.n_atoms, device=self.device),
        }

    def node_features(self, graph: Graph, edge_vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen backbone: per-atom 128 scalar features and element (type) indices."""
        import sevenn._keys as KEY

        data = self.input_data(graph, edge_vec)
        for _, module in self.backbone_modules():
            data = module(data)
        return data[KEY.NODE_FEATURE], data[KEY.ATOM_TYPE]

    def atomic_energies(self, h: torch.Tensor, atom_type: torch.Tensor) -> torch.Tensor:
        """The model's own head and rescale modules applied to the features."""
        import sevenn._keys as KEY

        data: dict[str, Any] = {KEY.NODE_FEATURE: h, KEY.ATOM_TYPE: atom_type}
        for name in (HEAD_IN, HEAD_OUT, RESCALE):
            data = self.module._modules[name](data)
        return data[KEY.ATOMIC_ENERGY]

    def feature_sum(self, h: torch.Tensor, atom_type: torch.Tensor) -> torch.Tensor:
        """S = sum_i scale(z_i) h_i, so that E = S . w + const."""
        return (h * self.scale[atom_type].view(-1, 1)).sum(0)

    def forces_for_training(self, graph: Graph, atoms: torch.Tensor) -> torch.Tensor:
        """Forces on ``atoms`` (indices) with the graph kept, so they can be trained on."""
        pos = graph.pos.clone().requires_grad_(True)
        h, atom_type = self.node_features(graph, graph.edge_vec(pos))
        energy = self.atomic_energies(h, atom_type).sum()
        (grad,) = torch.autograd.grad(energy, pos, create_graph=True)
        return -grad[atoms].to(torch.float32)
