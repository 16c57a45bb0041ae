"""The convolution linearisation against e3nn itself, on a random uvu tensor product."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
o3 = pytest.importorskip("e3nn.o3")

from finetuna_core.surrogates.sevennet.conv_linearisation import linearise  # noqa: E402


def _uvu_product(irreps_in: str, lmax: int) -> tuple[object, object]:
    """A SevenNet-style convolution product: every allowed path, one output block each."""
    irreps_in1 = o3.Irreps(irreps_in)
    irreps_sh = o3.Irreps.spherical_harmonics(lmax, p=1)
    out, instructions = [], []
    for i1, (mul, ir1) in enumerate(irreps_in1):
        for i2, (_, ir2) in enumerate(irreps_sh):
            for ir in ir1 * ir2:
                if ir.l <= lmax:
                    instructions.append((i1, i2, len(out), "uvu", True))
                    out.append((mul, ir))
    tp = o3.TensorProduct(irreps_in1, irreps_sh, o3.Irreps(out), instructions,
                          internal_weights=False, shared_weights=False)
    return tp, irreps_sh


def _graph(n_atoms: int, n_edges: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n_atoms, (n_edges,), generator=gen)
    dst = (src + torch.randint(1, n_atoms, (n_edges,), generator=gen)) % n_atoms
    vec = torch.randn(n_edges, 3, generator=gen)
    return src, dst, vec


@pytest.mark.slow
@pytest.mark.parametrize("dense", [True, False])
def test_linearisation_matches_autograd(dense: bool) -> None:
    torch.manual_seed(0)
    tp, irreps_sh = _uvu_product("8x0e+6x1e+5x2e", 2)
    radial = torch.nn.Linear(1, tp.weight_numel)
    n_atoms, n_edges = 7, 30
    src, dst, vec = _graph(n_atoms, n_edges, seed=1)
    x = torch.randn(n_atoms, tp.irreps_in1.dim)

    def geometry(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sh = o3.spherical_harmonics(irreps_sh, v, normalize=True)
        return sh, torch.sin(radial(v.norm(dim=1, keepdim=True)))

    unit = torch.eye(3)[:, None, :].expand(3, n_edges, 3)
    with torch.no_grad():
        attr, weight = geometry(vec)
        d_attr, d_weight = torch.func.vmap(lambda t: torch.func.jvp(geometry, (vec,), (t,))[1])(unit)
        lin = linearise(tp, x[dst], attr, weight, d_attr, d_weight, src, dst, n_atoms, 2.0, dense)
        expected_dm = torch.func.vmap(
            lambda t: torch.func.jvp(lambda v: tp(x[dst], *geometry(v)), (vec,), (t,))[1]
        )(unit)
    assert lin is not None
    torch.testing.assert_close(lin.edge_derivative, expected_dm, rtol=1e-4, atol=1e-5)
    if not dense:
        assert lin.pair_operator is None
        return
    dx = torch.randn(3, n_atoms, tp.irreps_in1.dim)
    expected = torch.stack(
        [torch.zeros(n_atoms, tp.irreps_out.dim).index_add(0, src, tp(d[dst], attr, weight)) for d in dx]
    ) / 2.0
    torch.testing.assert_close(lin.pair_operator(dx), expected, rtol=1e-4, atol=1e-5)


def test_other_products_are_declined() -> None:
    """A fully connected (uvw) product is not linearised: the caller falls back to e3nn."""
    irreps = o3.Irreps("4x0e+2x1e")
    tp = o3.FullyConnectedTensorProduct(irreps, o3.Irreps("1x0e+1x1e"), irreps,
                                        internal_weights=False, shared_weights=False)
    n_atoms, n_edges = 4, 6
    src, dst, _ = _graph(n_atoms, n_edges, seed=2)
    attr = torch.randn(n_edges, 4)
    weight = torch.randn(n_edges, tp.weight_numel)
    zeros = torch.zeros(3, n_edges, 4), torch.zeros(3, n_edges, tp.weight_numel)
    x = torch.randn(n_edges, irreps.dim)
    assert linearise(tp, x, attr, weight, *zeros, src, dst, n_atoms, 1.0, True) is None
