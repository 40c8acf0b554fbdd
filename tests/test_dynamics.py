"""Sharpness and top Hessian eigenvalue against a quadratic L(w) = 0.5 w^T A w + b^T w."""

import math

import pytest
import torch

from eqaudit.finetune.dynamics import hessian_vector_product, random_directions, sharpness, top_hessian_eigenvalue


def _quadratic(n=6, seed=0, eigs=None):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    lam = torch.tensor(eigs if eigs is not None else [5.0, 2.0, 1.0, 0.5, 0.25, -0.5][:n], dtype=torch.float64)
    a = q @ torch.diag(lam) @ q.T
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64))

    def loss():
        return 0.5 * w @ a @ w + b @ w

    return a, b, w, loss


def test_top_eigenvalue_is_max_eig_of_A():
    a, _, w, loss = _quadratic()
    r = top_hessian_eigenvalue(loss, [w], iterations=200, tol=1e-12)
    assert r["converged"]
    assert r["eigenvalue"] == pytest.approx(float(torch.linalg.eigvalsh(a).max()), rel=1e-8)


def test_top_eigenvalue_over_several_parameter_tensors():
    # Two parameter tensors, Hessian block-diagonal: the top eigenvalue is the larger block's.
    _, _, w1, l1 = _quadratic(3, seed=1, eigs=[3.0, 1.0, 0.5])
    _, _, w2, l2 = _quadratic(3, seed=2, eigs=[7.0, 2.0, 1.0])
    r = top_hessian_eigenvalue(lambda: l1() + l2(), [w1, w2], iterations=300, tol=1e-12)
    assert r["eigenvalue"] == pytest.approx(7.0, rel=1e-7)


def test_hvp_matches_A_v():
    a, _, w, loss = _quadratic()
    v = torch.randn(6, dtype=torch.float64)
    (hv,) = hessian_vector_product(loss, [w], [v])
    assert torch.allclose(hv, a @ v)


def test_sharpness_closed_form_with_explicit_directions():
    a, b, w, loss = _quadratic()
    gen = torch.Generator().manual_seed(3)
    dirs = []
    for _ in range(5):
        d = torch.randn(6, generator=gen, dtype=torch.float64)
        dirs.append([d / d.norm()])
    ts = [0.01, 0.1, -0.3]
    w0 = w.detach().clone()
    r = sharpness(loss, [w], displacements=ts, directions=dirs)
    g = a @ w0 + b
    expected = [[abs(t * (d[0] @ g) + 0.5 * t * t * (d[0] @ a @ d[0])) for t in ts] for d in dirs]
    flat = [x.item() for row in expected for x in row]
    assert r["phi"] == pytest.approx(sum(flat) / len(flat), rel=1e-10)
    per_t = [sum(row[j] for row in expected).item() / len(dirs) for j in range(len(ts))]
    assert r["per_displacement"] == pytest.approx(per_t, rel=1e-10)
    assert r["displacements"] == ts and r["directions"] == 5
    assert r["loss"] == pytest.approx(float(0.5 * w0 @ a @ w0 + b @ w0))
    assert torch.equal(w.detach(), w0), "parameters must be restored bit for bit"


def test_sharpness_random_directions_are_unit_and_reproducible():
    a, b, w, loss = _quadratic()
    dirs = random_directions([w], 4, seed=7)
    for d in dirs:
        assert math.isclose(float(d[0].norm()), 1.0, rel_tol=1e-12)
    r1 = sharpness(loss, [w], displacements=[0.2], directions=4, seed=7)
    r2 = sharpness(loss, [w], displacements=[0.2], directions=dirs)
    assert r1["phi"] == r2["phi"]
    g = a @ w.detach() + b
    by_hand = sum(abs(0.2 * (d[0] @ g) + 0.02 * (d[0] @ a @ d[0])) for d in dirs) / 4
    assert r1["phi"] == pytest.approx(float(by_hand), rel=1e-10)


def test_at_the_minimum_sharpness_is_the_curvature_term():
    # At w* = -A^{-1} b the linear term vanishes: phi = mean 0.5 t^2 |d^T A d|.
    a, b, w, loss = _quadratic(eigs=[4.0, 3.0, 2.0, 1.0, 1.0, 1.0])
    with torch.no_grad():
        w.copy_(-torch.linalg.solve(a, b))
    dirs = random_directions([w], 6, seed=0)
    r = sharpness(loss, [w], displacements=[0.5], directions=dirs)
    by_hand = sum(0.125 * float(d[0] @ a @ d[0]) for d in dirs) / 6
    assert r["phi"] == pytest.approx(by_hand, rel=1e-8)


def test_eigenvalue_of_a_small_network_matches_the_full_hessian():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))
    params = list(net.parameters())

    def loss():
        return torch.nn.functional.cross_entropy(net(x), y)

    r = top_hessian_eigenvalue(loss, params, iterations=500, tol=1e-12)
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    shapes = [p.shape for p in params]

    def loss_of(vec):
        chunks, i = [], 0
        for s in shapes:
            n = math.prod(s)
            chunks.append(vec[i : i + n].reshape(s))
            i += n
        return torch.func.functional_call(net, {n: c for (n, _), c in zip(net.named_parameters(), chunks)}, (x,))

    h = torch.autograd.functional.hessian(lambda v: torch.nn.functional.cross_entropy(loss_of(v), y), flat)
    eig = torch.linalg.eigvalsh(h)
    dominant = eig[eig.abs().argmax()]
    assert r["eigenvalue"] == pytest.approx(float(dominant), rel=1e-5)
