"""An e3nn ``uvu`` convolution linearised around fixed edges, for forward-mode Jacobians.

SevenNet's convolution sends along every edge ``e`` the message
``m_e = TP(x_src(e), Y(r_e), W(|r_e|))``, an e3nn tensor product whose instructions are all
``uvu``: channel ``u`` of input block ``b`` feeds channel ``u`` of one output block per
instruction ``p``, scaled by one radial weight ``W[e, p, u]``:

    m[e, p, u, o] = W[e, p, u] * sum_i x[e, u, i] K_p[e, i, o],    K_p = K_p(Y_e)

with ``K_p`` linear in ``Y`` and free of channels.  One call of the tensor product with unit
weights and a probe that puts component ``i`` of every block in channel ``i`` returns
``K_p`` for every instruction at once (and, with ``dY`` in place of ``Y``, its derivative),
so no Clebsch-Gordan or normalisation convention is re-derived here.  From ``K`` follow

* the derivative of every message w.r.t. its own edge vector (the geometric part of a
  coordinate tangent), ``dm = dW * (K x) + W * (dK x)``, and
* the message tangent for a node-feature tangent ``dx``, summed into atoms: per channel a
  dense matrix over (atom, component) pairs, so a batch of tangents costs one batched
  matmul per input block instead of e3nn's per-edge, per-path kernels.

The caller checks the result against the tensor product once per module.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Linearisation", "PairOperator", "linearise", "pair_operator_floats"]


class PairOperator:
    """``dx (T, N, dim_in) -> d(sum of messages into each atom) (T, N, dim_out)``."""

    def __init__(self, blocks: list[tuple[slice, int, int, torch.Tensor, torch.Tensor]], n_atoms: int,
                 dim_out: int) -> None:
        self.blocks = blocks  # (input slice, multiplicity, components, (mul, N*d_in, N*d_out), output index)
        self.n_atoms = n_atoms
        self.dim_out = dim_out

    def __call__(self, dx: torch.Tensor) -> torch.Tensor:
        n_tan, n = dx.shape[0], self.n_atoms
        out = dx.new_zeros(n_tan, n, self.dim_out)
        for sl, mul, d_in, dense, index in self.blocks:
            xb = dx[:, :, sl].reshape(n_tan, n, mul, d_in).permute(2, 0, 1, 3).reshape(mul, n_tan, n * d_in)
            yb = torch.bmm(xb, dense).view(mul, n_tan, n, -1).permute(1, 2, 0, 3).reshape(n_tan, n, -1)
            out.index_add_(2, index, yb)
        return out


@dataclass
class Linearisation:
    """What the sparse Jacobian needs from one convolution."""

    edge_derivative: torch.Tensor  # (3, E, dim_out): d m_e / d r_e,c (not divided by the denominator)
    pair_operator: PairOperator | None  # None when the dense operator exceeds the memory budget


@dataclass
class _Path:
    block: int  # input block
    out_block: int
    out: slice  # output slice
    mul: int
    d_in: int
    d_out: int
    weights: slice  # columns of the per-edge weight tensor


def _paths(tp: Any) -> list[_Path] | None:
    """The instructions as paths, or None when the structure above does not hold."""
    instructions = list(getattr(tp, "instructions", []))
    if not instructions or getattr(tp, "shared_weights", True) or getattr(tp, "internal_weights", True):
        return None
    outs = [ins.i_out for ins in instructions]
    if len(set(outs)) != len(outs):
        return None  # an output block fed by two instructions: probes would not separate them
    out_slices = tp.irreps_out.slices()
    paths, offset = [], 0
    for ins in instructions:
        mul, ir = tp.irreps_in1[ins.i_in1]
        mul2 = tp.irreps_in2[ins.i_in2].mul
        mul_o, ir_o = tp.irreps_out[ins.i_out]
        if ins.connection_mode != "uvu" or not ins.has_weight or mul2 != 1 or mul_o != mul or mul < ir.dim:
            return None
        weights = slice(offset, offset + mul)
        paths.append(_Path(ins.i_in1, ins.i_out, out_slices[ins.i_out], mul, ir.dim, ir_o.dim, weights))
        offset += mul
    return paths if offset == tp.weight_numel else None


_KERNEL_TPS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _kernel_tensor_product(tp: Any, device: torch.device) -> Any:
    """``tp`` with every block cut to ``ir.dim`` channels, same path weights: gives ``K``.

    Channel ``i`` of a block probes component ``i``; uvu paths keep channels apart, so
    ``ir.dim`` channels are all the probe needs (instead of e.g. 128).  Normalisation is
    switched off and the original's final path weights are passed in (e3nn stores
    ``sqrt(alpha)`` and takes ``path_weight`` as ``alpha``), so the paths are identical.
    """
    kernel = _KERNEL_TPS.get(tp)
    if kernel is None:
        from e3nn import o3

        in1 = o3.Irreps([(ir.dim, ir) for _, ir in tp.irreps_in1])
        fed_by = {ins.i_out: ins.i_in1 for ins in tp.instructions}
        out = o3.Irreps(
            [(in1[fed_by[o]].mul if o in fed_by else 0, ir) for o, (_, ir) in enumerate(tp.irreps_out)]
        )
        instructions = [
            (ins.i_in1, ins.i_in2, ins.i_out, ins.connection_mode, ins.has_weight, ins.path_weight**2)
            for ins in tp.instructions
        ]
        kernel = o3.TensorProduct(
            in1, tp.irreps_in2, out, instructions, irrep_normalization="none", path_normalization="none",
            internal_weights=False, shared_weights=False,
        ).to(device)
        _KERNEL_TPS[tp] = kernel
    return kernel


def pair_operator_floats(tp: Any, n_atoms: int) -> int:
    """Size of the dense pair operator of ``tp`` on ``n_atoms`` atoms."""
    paths = _paths(tp) or []
    return sum(p.mul * p.d_in * p.d_out for p in paths) * n_atoms * n_atoms


def linearise(tp: Any, x_src: torch.Tensor, attr: torch.Tensor, weight: torch.Tensor, d_attr: torch.Tensor,
              d_weight: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, n_atoms: int, denominator: float,
              dense: bool) -> Linearisation | None:
    """Linearise ``tp(x[dst], attr, weight)`` (messages summed into ``src``).

    ``d_attr``/``d_weight``: derivatives of ``attr``/``weight`` w.r.t. each edge's own vector,
    shapes ``(3, E, ...)``.  ``dense``: also build the pair operator.  None if ``tp`` does
    not have the structure this relies on.
    """
    paths = _paths(tp)
    if paths is None:
        return None
    n_edges = x_src.shape[0]
    in_slices = tp.irreps_in1.slices()
    kernel_tp = _kernel_tensor_product(tp, x_src.device)
    probe = x_src.new_zeros(n_edges, kernel_tp.irreps_in1.dim)
    for sl, (d, _) in zip(kernel_tp.irreps_in1.slices(), kernel_tp.irreps_in1, strict=True):
        probe[:, sl] = torch.eye(d, dtype=probe.dtype, device=probe.device).reshape(-1)
    ones = weight.new_ones(4 * n_edges, kernel_tp.weight_numel)
    kernels = kernel_tp(probe.repeat(4, 1), torch.cat([attr, *d_attr]), ones).view(4, n_edges, -1)
    kernel_out = kernel_tp.irreps_out.slices()

    edge_derivative = x_src.new_zeros(3, n_edges, tp.irreps_out.dim)
    by_block: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for p in paths:
        K = kernels[:, :, kernel_out[p.out_block]].reshape(4, n_edges, p.d_in, p.d_out)
        W, dW = weight[:, p.weights], d_weight[:, :, p.weights]  # (E, mul), (3, E, mul)
        xb = x_src[:, in_slices[p.block]].reshape(n_edges, p.mul, p.d_in)
        Kx = torch.einsum("eui,keio->keuo", xb, K)  # (4, E, mul, d_out)
        dm = dW[..., None] * Kx[0] + W[None, :, :, None] * Kx[1:]
        edge_derivative[:, :, p.out] = dm.reshape(3, n_edges, -1)
        if dense:
            B = (W[:, :, None, None] * K[0][:, None]) / denominator  # (E, mul, d_in, d_out)
            index = torch.arange(p.out.start, p.out.stop, device=x_src.device).view(p.mul, p.d_out)
            by_block.setdefault(p.block, []).append((B, index))

    operator = None
    if dense:
        pair = src * n_atoms + dst
        blocks = []
        for b, parts in by_block.items():
            mul, ir = tp.irreps_in1[b]
            B = torch.cat([part for part, _ in parts], dim=3)
            d_out = B.shape[3]
            matrix = B.new_zeros(n_atoms * n_atoms, mul, ir.dim, d_out).index_add_(0, pair, B)
            matrix = matrix.view(n_atoms, n_atoms, mul, ir.dim, d_out).permute(2, 1, 3, 0, 4)
            matrix = matrix.reshape(mul, n_atoms * ir.dim, n_atoms * d_out).contiguous()
            index = torch.cat([idx for _, idx in parts], dim=1).reshape(-1)
            blocks.append((in_slices[b], mul, ir.dim, matrix, index))
        operator = PairOperator(blocks, n_atoms, tp.irreps_out.dim)
    return Linearisation(edge_derivative, operator)
