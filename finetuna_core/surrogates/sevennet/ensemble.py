"""Predictions of the fitted head, alone or with an ensemble of offset heads.

An ensemble member ``k`` is the fitted head ``w`` plus an offset ``d_k`` (the offsets sum to
zero).  Its energy is ``E + d_k . S`` and its forces ``F - d(d_k . S)/dr``, so the whole
ensemble costs one forward pass and K backward passes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..base import Prediction
from .network import Graph, HeadNetwork

__all__ = ["predict"]


def predict(network: HeadNetwork, graph: Graph, deviations: np.ndarray | None) -> Prediction:
    """Energy and forces (ensemble mean) and, with ``deviations`` (K, n_features), the spread."""
    pos = graph.pos.clone().requires_grad_(True)
    h, atom_type = network.node_features(graph, graph.edge_vec(pos))
    energy = network.atomic_energies(h, atom_type).sum()
    if deviations is None:
        (grad,) = torch.autograd.grad(energy, pos)
        return Prediction(float(energy.item()), -grad.detach().cpu().numpy(), None)

    dev = torch.as_tensor(deviations, dtype=torch.float32, device=network.device)
    s = network.feature_sum(h, atom_type)
    # One backward per output (a loop reusing the graph measured faster than one batched
    # vmap'd backward).  The last member's force offset is minus the sum of the others.
    outputs = [energy] + [dev[k] @ s for k in range(len(dev) - 1)]
    grads = [torch.autograd.grad(out, pos, retain_graph=i < len(outputs) - 1)[0] for i, out in enumerate(outputs)]
    main = grads[0].detach().double().cpu().numpy()
    offsets = np.stack([g.detach().double().cpu().numpy() for g in grads[1:]])
    offsets = np.concatenate([offsets, -offsets.sum(axis=0, keepdims=True)])
    member_forces = -(main[None] + offsets)  # (K, N, 3)
    member_energy = energy.item() + (dev @ s).detach().double().cpu().numpy()
    mean_forces = member_forces.mean(axis=0)
    spread = np.sqrt(((member_forces - mean_forces) ** 2).sum(axis=2).mean(axis=0))
    return Prediction(float(member_energy.mean()), mean_forces, spread)
