"""The Jacobian ``J = dS/dr`` of the summed scaled features with respect to free-atom positions.

``S = sum_i scale(z_i) h_i`` (128 numbers), so forces on the free atoms are ``-(J^T w)``; ``J``
is what the ridge refit needs from every parent point.  Four engines compute it, all exact:

* ``sparse`` (the default, fastest measured): forward mode over the free coordinates, each
  convolution linearised around its fixed edges (:mod:`.conv_linearisation`): its edge-geometry
  derivative is applied only on the edges touching the moved atom, and its node-feature tangent
  map is per-channel matrices over atom pairs, so all tangents go through the network as a few
  batched matmuls (about 1 s for 50 atoms, 17 free, 2 cores);
* ``forward``: plain vmapped forward-mode AD (``torch.func.jvp``);
* ``reverse``: 128 vector-Jacobian products batched with ``is_grads_batched``;
* ``reverse_loop``: 128 separate backward passes (least memory).
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from .conv_linearisation import Linearisation, linearise, pair_operator_floats
from .network import Graph, HeadNetwork
from .settings import JacobianMode

__all__ = ["JacobianEngine", "LinearisationCheck"]


class LinearisationCheck(enum.Enum):
    """How far a convolution's linearisation has been checked against e3nn."""

    EDGES = "edges"  # the edge derivative
    ALL = "all"  # also the pair matrices
    FAILED = "failed"  # disagreed or does not apply: that convolution goes through e3nn


class JacobianEngine:
    """Computes ``J`` (n_features, 3 n_free) of one network in any :data:`JacobianMode`."""

    def __init__(self, network: HeadNetwork) -> None:
        self.network = network
        self._checks: dict[str, LinearisationCheck] = {}
        self.supports_sparse = self._check_sparse_support()

    @property
    def linearisation_checks(self) -> Mapping[str, LinearisationCheck]:
        """Per convolution (module name): what of its linearisation was checked."""
        return dict(self._checks)

    def compute(self, graph: Graph, free: np.ndarray, mode: JacobianMode, *, chunk: int,
                memory_mb: float) -> np.ndarray:
        """``J`` for the atoms ``free``; columns ordered (atom, x/y/z).

        ``chunk``: tangents per batch; ``memory_mb``: largest pair matrix the sparse mode
        builds.  The sparse mode falls back to plain forward mode on models or graphs it
        does not handle.
        """
        n_features = self.network.n_features
        if len(free) == 0:
            return np.zeros((n_features, 0))
        if mode == "sparse" and self.supports_sparse and graph.n_atoms * len(graph.src) <= 5e7:
            return self._sparse(graph, free, chunk, memory_mb)
        if mode in ("sparse", "forward"):
            return self._forward(graph, free, chunk)
        if mode == "reverse":
            return self._reverse(graph, free, batched=True)
        if mode == "reverse_loop":
            return self._reverse(graph, free, batched=False)
        raise ValueError(f"unknown jacobian mode {mode!r}")

    # ----------------------------------------------------------------- plain AD

    def _forward(self, g: Graph, free: np.ndarray, chunk: int) -> np.ndarray:
        """Forward-mode AD: one JVP per free coordinate, vmapped in chunks."""
        net = self.network
        free_t = torch.as_tensor(free, device=net.device)
        # d(edge_vec)/d(r_a,c) = e_c * ([dst == a] - [src == a])
        incidence = (g.dst[None, :] == free_t[:, None]).float() - (g.src[None, :] == free_t[:, None]).float()
        eye = torch.eye(3, device=net.device)
        tangents = (incidence[:, None, :, None] * eye[None, :, None, :]).reshape(3 * len(free), -1, 3)
        edge_vec = g.edge_vec(g.pos)

        def feature_sum(ev: torch.Tensor) -> torch.Tensor:
            return net.feature_sum(*net.node_features(g, ev))

        def column(t: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(feature_sum, (edge_vec,), (t,))[1]

        with torch.no_grad():
            cols = torch.func.vmap(column, chunk_size=min(chunk, 16))(tangents)
        return cols.T.double().cpu().numpy().copy()

    def _reverse(self, g: Graph, free: np.ndarray, batched: bool) -> np.ndarray:
        """Reverse mode: one vector-Jacobian product per feature (batched with vmap, or a loop)."""
        net = self.network
        pos = g.pos.clone().requires_grad_(True)
        s = net.feature_sum(*net.node_features(g, g.edge_vec(pos)))
        if batched:
            eye = torch.eye(net.n_features, dtype=s.dtype, device=net.device)
            rows = torch.autograd.grad(s, pos, eye, is_grads_batched=True)[0]
        else:
            last = len(s) - 1
            rows = torch.stack([torch.autograd.grad(s[k], pos, retain_graph=k < last)[0] for k in range(len(s))])
        rows = rows[:, torch.as_tensor(free, device=net.device)]  # (128, n_free, 3)
        return rows.reshape(net.n_features, -1).double().cpu().numpy().copy()

    # ----------------------------------------------------------------- sparse forward mode

    def _check_sparse_support(self) -> bool:
        """The sparse mode needs convolutions to be the only consumers of edge geometry."""
        from sevenn.nn.convolution import IrrepsConvolution
        from sevenn.nn.edge_embedding import EdgeEmbedding
        from sevenn.nn.equivariant_gate import EquivariantGate
        from sevenn.nn.linear import IrrepsLinear
        from sevenn.nn.node_embedding import OnehotEmbedding
        from sevenn.nn.self_connection import SelfConnectionIntro, SelfConnectionLinearIntro, SelfConnectionOutro

        known = (IrrepsConvolution, EdgeEmbedding, EquivariantGate, IrrepsLinear, OnehotEmbedding,
                 SelfConnectionIntro, SelfConnectionLinearIntro, SelfConnectionOutro)
        modules = [module for _, module in self.network.backbone_modules()]
        return all(type(m) in known for m in modules) and isinstance(modules[0], EdgeEmbedding)

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

    def _sparse(self, g: Graph, free: np.ndarray, chunk: int, memory_mb: float) -> np.ndarray:
        """Forward mode with the edge-geometry part of each convolution applied sparsely.

        A convolution's messages ``m_e = TP(x_src(e), Y(r_e), W(|r_e|))`` change with an
        atom's position through the node features ``x`` (dense) and through the geometry of
        the edges touching that atom only.  So per layer we compute, once, the derivative of
        every message w.r.t. its own edge vector, ``D[c, e] = dm_e/dr_e,c``, and for each free
        coordinate add ``+-D`` on its incident edges; the dense ``TP(dx_src, Y, W)`` term is
        a fixed linear map of the node tangents (pair matrices, or e3nn per tangent when
        they would exceed ``memory_mb``).
        """
        import sevenn._keys as KEY
        from sevenn.nn.convolution import IrrepsConvolution
        from sevenn.nn.edge_embedding import EdgeEmbedding

        net = self.network
        node_keys = (KEY.NODE_FEATURE, KEY.SELF_CONNECTION_TEMP)
        dev = net.device
        n_atoms, n_tan = g.n_atoms, 3 * len(free)
        edge_vec = g.edge_vec(g.pos)
        # tangent of edge e for coordinate (free[j], c): +1 if dst == atom, -1 if src == atom
        pair_j, pair_e, pair_sign = [], [], []
        for j, atom in enumerate(free):
            for sign, hits in ((1.0, g.dst == int(atom)), (-1.0, g.src == int(atom))):
                e = torch.nonzero(hits).view(-1)
                pair_j.append(torch.full_like(e, j))
                pair_e.append(e)
                pair_sign.append(torch.full((len(e),), sign, device=dev))
        pj, pe, ps = torch.cat(pair_j), torch.cat(pair_e), torch.cat(pair_sign)

        data = net.input_data(g, edge_vec)
        records: list[tuple[dict[str, Any], list[str]]] = []
        geo: list[torch.Tensor] = []
        conv_maps: list[Callable[[torch.Tensor], torch.Tensor]] = []
        embed = next(m for _, m in net.backbone_modules() if isinstance(m, EdgeEmbedding))
        with torch.no_grad():
            for name, mod in net.backbone_modules():
                rec = dict(data)
                if isinstance(mod, IrrepsConvolution):
                    x_src = rec[KEY.NODE_FEATURE][g.dst]
                    dmsg, tangent_map = self._linearise_convolution(name, mod, embed, edge_vec, x_src, rec, g,
                                                                    memory_mb)
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
            for (_, mod), (rec, out_keys) in zip(net.backbone_modules(), records, strict=True):
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

        with torch.no_grad():
            dh = torch.cat([propagate([t[i : i + chunk] for t in geo]) for i in range(0, n_tan, chunk)])
            cols = (dh * net.scale[atom_type].view(1, -1, 1)).sum(1)  # (3 n_free, 128)
        return cols.T.double().cpu().numpy().copy()

    def _linearise_convolution(
        self, name: str, mod: Any, embed: Any, edge_vec: torch.Tensor, x_src: torch.Tensor, rec: dict[str, Any],
        g: Graph, memory_mb: float,
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """One convolution's ``d m_e / d r_e`` (3, E, dim) and its batched node-tangent map.

        Uses :mod:`.conv_linearisation`, checked against the tensor product the first time
        per module (and again the first time its pair matrices are built); falls back to
        JVPs through e3nn when that does not apply or disagrees.
        """
        import sevenn._keys as KEY

        tp, n_atoms = mod.convolution, g.n_atoms
        attr, weight = rec[KEY.EDGE_ATTR], mod.weight_nn(rec[KEY.EDGE_EMBEDDING])
        unit = torch.eye(3, device=self.network.device)[:, None, :].expand(3, len(g.src), 3).contiguous()

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
        status = self._checks.get(name)
        lin = None
        if status is not LinearisationCheck.FAILED:
            d_attr, d_weight = torch.func.vmap(lambda t: torch.func.jvp(geometry, (edge_vec,), (t,))[1])(unit)
            dense = pair_operator_floats(tp, n_atoms) <= memory_mb * 2**20 / 4
            lin = linearise(tp, x_src, attr, weight, d_attr, d_weight, g.src, g.dst, n_atoms, mod.denominator, dense)
            reached = None
            if lin is not None:
                reached = LinearisationCheck.ALL if lin.pair_operator is not None else LinearisationCheck.EDGES
            unchecked = reached is not None and status not in (reached, LinearisationCheck.ALL)
            if unchecked and not self._linearisation_matches(lin, message_derivative, e3nn_map, x_src):
                warnings.warn("convolution linearisation disagrees with e3nn; using JVPs for it", stacklevel=2)
                lin = reached = None
            if reached is None or status is not LinearisationCheck.ALL:
                self._checks[name] = reached or LinearisationCheck.FAILED
        if lin is None:
            return message_derivative(), e3nn_map
        return lin.edge_derivative, lin.pair_operator or e3nn_map

    @staticmethod
    def _linearisation_matches(lin: Linearisation, message_derivative: Callable[[], torch.Tensor],
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
