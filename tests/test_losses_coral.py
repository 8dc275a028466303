"""CORAL losses (RAL, OAL, CoralLoss) and the PCL baseline against naive references written here, in float64."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from volssl.losses import (
    CoralLoss,
    OrdinalDirectionLoss,
    PositionalContrastiveLoss,
    RelationalRankLoss,
    supcon_from_positives,
)
from volssl.losses._pairwise import off_diagonal, ranked_logsumexp

TOL = 1e-6


def num(t) -> float:
    """A Python float of a 0-dim tensor (detached) or of a number."""
    return float(t.detach()) if torch.is_tensor(t) else float(t)


# ---------------------------------------------------------------- naive references (float64, no tricks)


def naive_ral(z: torch.Tensor, p: torch.Tensor, tau: float = 0.1, kappa: float = 1.0, soft: bool = True):
    """RAL with an explicit N x N x N mask: mask[a, b, k] = (k != a) and d_ak >= d_ab."""
    n = z.shape[0]
    zn = z / z.norm(dim=1, keepdim=True)
    s = zn @ zn.T / tau
    d = (p[:, None] - p[None, :]).abs()
    eye = torch.eye(n, dtype=torch.bool)
    mask = (d[:, None, :] >= d[:, :, None]) & ~eye[:, None, :]
    den = (torch.exp(s)[:, None, :] * mask).sum(dim=2)
    loss = -torch.log(torch.exp(s) / den)
    w = torch.sigmoid(kappa * d) if soft else torch.ones_like(d)
    return (w * loss)[~eye].sum() / (n * (n - 1))


def loop_ral(z: torch.Tensor, p: torch.Tensor, tau: float = 0.1, kappa: float = 1.0, soft: bool = True) -> float:
    """RAL as a literal triple loop over Python floats (tiny N only)."""
    n = z.shape[0]
    zn = (z / z.norm(dim=1, keepdim=True)).tolist()
    pl = p.tolist()

    def s(a, b):
        return sum(x * y for x, y in zip(zn[a], zn[b])) / tau

    total = 0.0
    for a in range(n):
        for b in range(n):
            if a == b:
                continue
            dab = abs(pl[a] - pl[b])
            den = sum(math.exp(s(a, k)) for k in range(n) if k != a and abs(pl[a] - pl[k]) >= dab)
            w = 1.0 / (1.0 + math.exp(-kappa * dab)) if soft else 1.0
            total += w * -math.log(math.exp(s(a, b)) / den)
    return total / (n * (n - 1))


def naive_oal(z: torch.Tensor, p: torch.Tensor, v: torch.Tensor):
    """OAL with the explicit N x N x D difference tensor: diff[a, b] = z_b - z_a."""
    v_hat = v / v.norm()
    diff = z[None, :, :] - z[:, None, :]
    u = F.normalize(diff, dim=2)
    cos = u @ v_hat
    pairs = p[:, None] < p[None, :]
    return -cos[pairs].mean()


def naive_pcl(z: torch.Tensor, p: torch.Tensor, threshold: float, tau: float, base_tau: float):
    """SupCon per anchor, one anchor at a time."""
    n = z.shape[0]
    zn = z / z.norm(dim=1, keepdim=True)
    s = zn @ zn.T / tau
    per_anchor = []
    for a in range(n):
        others = [k for k in range(n) if k != a]
        log_den = torch.logsumexp(s[a, others], dim=0)
        pos = [b for b in others if abs(float(p[a]) - float(p[b])) < threshold]
        per_anchor.append(-torch.stack([s[a, b] - log_den for b in pos]).mean())
    return tau / base_tau * torch.stack(per_anchor).mean()


# ---------------------------------------------------------------- inputs


def two_view_batch(b: int, d: int, levels: int, seed: int, dtype=torch.float64):
    """B slices with positions on a coarse dyadic grid (k / levels: many exact ties, also of position gaps), two
    views each -> N = 2B embeddings, positions repeated for the second view (so d = 0 pairs exist)."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(1, levels + 1, (b,), generator=g).to(dtype) / levels
    z = torch.randn(2 * b, d, generator=g, dtype=dtype)
    return z, torch.cat([pos, pos])


def grad_of(fn, z, *args):
    z = z.detach().clone().requires_grad_(True)
    value = fn(z, *args)
    (grad,) = torch.autograd.grad(value, z)
    return value.detach(), grad


# ---------------------------------------------------------------- helpers


def test_off_diagonal_layout():
    x = torch.arange(25.0).reshape(5, 5)
    expected = torch.stack([torch.cat([x[a, :a], x[a, a + 1 :]]) for a in range(5)])
    assert torch.equal(off_diagonal(x), expected)


@pytest.mark.parametrize("bound", [None, 5.0, 500.0])
def test_ranked_logsumexp_with_ties(bound):
    # bound None and 500 (exp(-1000) underflows) take the logcumsumexp path, 5 the shifted exp-cumsum path.
    g = torch.Generator().manual_seed(0)
    logits = (2 * torch.rand(7, 30, generator=g, dtype=torch.float64) - 1) * 5.0
    keys = torch.randint(0, 4, (7, 30), generator=g).to(torch.float64)
    out = ranked_logsumexp(logits, keys, logit_bound=bound)
    ref = torch.stack(
        [torch.stack([torch.logsumexp(logits[r][keys[r] >= keys[r, j]], 0) for j in range(30)]) for r in range(7)]
    )
    assert (out - ref).abs().max() < 1e-12


# ---------------------------------------------------------------- RAL


@pytest.mark.parametrize("soft", [True, False])
@pytest.mark.parametrize("b,levels,seed", [(1, 4, 0), (3, 4, 1), (8, 4, 2), (16, 8, 3), (40, 8, 4), (64, 1000, 5)])
def test_ral_matches_naive_value_and_grad(soft, b, levels, seed):
    z, p = two_view_batch(b, 16, levels, seed)
    # the naive reference compares float distances exactly: so does the loss here (k / 1000 is not dyadic)
    loss = RelationalRankLoss(temperature=0.1, kappa=1.0, soft_weight=soft, tie_tolerance=0.0)
    ours, g_ours = grad_of(loss, z, p)
    ref, g_ref = grad_of(lambda zz, pp: naive_ral(zz, pp, 0.1, 1.0, soft), z, p)
    assert torch.isfinite(ours)
    assert abs(num(ours - ref)) < TOL
    assert (g_ours - g_ref).abs().max() < TOL


def test_ral_matches_triple_loop_and_kappa():
    z, p = two_view_batch(4, 5, 4, 7)
    for kappa, soft in [(1.0, True), (3.0, True), (1.0, False)]:
        ours = RelationalRankLoss(temperature=0.2, kappa=kappa, soft_weight=soft)(z, p)
        assert abs(num(ours) - loop_ral(z, p, 0.2, kappa, soft)) < TOL


@pytest.mark.parametrize("tau", [0.01, 0.05, 1.0])
def test_ral_other_temperatures(tau):
    z, p = two_view_batch(10, 8, 8, 12)
    ours, g_ours = grad_of(RelationalRankLoss(temperature=tau), z, p)
    ref, g_ref = grad_of(lambda zz, pp: naive_ral(zz, pp, tau), z, p)
    assert abs(num(ours - ref)) < TOL * max(1.0, abs(num(ref)))
    assert (g_ours - g_ref).abs().max() < TOL * max(1.0, num(g_ref.abs().max()))
    # float32 with tau = 0.01: exp(-200) underflows, so the logcumsumexp path is taken; still finite and close.
    ours32 = RelationalRankLoss(temperature=tau)(z.float(), p.float())
    assert torch.isfinite(ours32) and abs(num(ours32) - num(ref)) < 1e-3 * max(1.0, abs(num(ref)))


def _grid_batch(b: int, seed: int):
    """B slices from volumes of 10, 12, 15 or 20 slices (slice i at p = (i + 1) / S), two views: the integer
    numerators and slice counts, and the positions in float32 as the data pipeline hands them over."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([10, 12, 15, 20])[torch.randint(0, 4, (b,), generator=g)]
    index = (torch.rand(b, generator=g) * sizes).long()
    numer, denom = torch.cat([index + 1, index + 1]), torch.cat([sizes, sizes])
    return numer, denom, (numer.double() / denom).float()


def exact_tie_ral(z: torch.Tensor, numer: torch.Tensor, denom: torch.Tensor, tau: float = 0.1, kappa: float = 1.0):
    """Naive RAL whose ties are exact: distances compared as integers over the common denominator of the positions
    p = numer / denom (the weights use the float64 distances)."""
    n = z.shape[0]
    common = math.lcm(*set(denom.tolist()))
    scaled = numer * (common // denom)
    d_int = (scaled[:, None] - scaled[None, :]).abs()
    zn = z / z.norm(dim=1, keepdim=True)
    s = zn @ zn.T / tau
    eye = torch.eye(n, dtype=torch.bool)
    mask = (d_int[:, None, :] >= d_int[:, :, None]) & ~eye[:, None, :]
    loss = -torch.log(torch.exp(s) / (torch.exp(s)[:, None, :] * mask).sum(dim=2))
    return (torch.sigmoid(kappa * d_int.double() / common) * loss)[~eye].sum() / (n * (n - 1))


def test_ral_default_keeps_the_formulas_ties_at_n256():
    """The paper's ties by default: at N = 256 (128 slices of volumes with 10-20 slices, float32 positions) the default
    loss and its gradient match the exact-tie reference to 1e-6; exact float comparisons (tie_tolerance 0, the
    released code) split tie groups and miss it by far more."""
    numer, denom, p32 = _grid_batch(128, seed=0)
    z = torch.randn(256, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref, g_ref = grad_of(lambda zz: exact_tie_ral(zz, numer, denom), z)
    ours, g_ours = grad_of(RelationalRankLoss(), z, p32)
    assert RelationalRankLoss().tie_tolerance == CoralLoss(8).relational.tie_tolerance == 1e-6
    assert abs(num(ours - ref)) < 1e-6 and (g_ours - g_ref).abs().max() < 1e-6
    exact, g_exact = grad_of(RelationalRankLoss(tie_tolerance=0.0), z, p32)
    assert abs(num(exact - ref)) > 1e-3 and (g_exact - g_ref).norm() > 0.01 * g_ref.norm()
    # float32 embeddings (training): still the exact-tie value, to float32 rounding
    assert abs(num(RelationalRankLoss()(z.float(), p32)) - num(ref)) < 1e-5


def test_ral_tie_tolerance_removes_rounding_dependence():
    # Positions on a k/10 grid: gaps such as 0.3 - 0.1 and 0.5 - 0.3 are equal but round differently. With a small
    # tolerance, float32 and float64 positions give the loss of exactly tied gaps (distances from integer slice gaps).
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(1, 11, (24,), generator=g)
    z = torch.randn(48, 16, generator=g, dtype=torch.float64)
    p_int = torch.cat([idx, idx])

    def exact_ral(zz):
        # naive RAL with d = |i_a - i_b| / 10: equal integer gaps give bitwise-equal distances
        n = zz.shape[0]
        zn = zz / zz.norm(dim=1, keepdim=True)
        s = zn @ zn.T / 0.1
        d = (p_int[:, None] - p_int[None, :]).abs().double() / 10
        eye = torch.eye(n, dtype=torch.bool)
        mask = (d[:, None, :] >= d[:, :, None]) & ~eye[:, None, :]
        loss = -torch.log(torch.exp(s) / (torch.exp(s)[:, None, :] * mask).sum(dim=2))
        return (torch.sigmoid(d) * loss)[~eye].sum() / (n * (n - 1))

    ref = exact_ral(z)
    tolerant = RelationalRankLoss(tie_tolerance=1e-6)
    for dtype in (torch.float64, torch.float32):
        p = p_int.to(dtype) / 10
        assert abs(num(tolerant(z.to(dtype), p)) - num(ref)) < (1e-9 if dtype == torch.float64 else 1e-5)
        exact = RelationalRankLoss(tie_tolerance=0.0)
        assert abs(num(exact(z.to(dtype), p)) - num(naive_ral(z.to(dtype), p))) < 1e-5
    with pytest.raises(ValueError):
        RelationalRankLoss(tie_tolerance=-1.0)


def test_ral_single_view_distinct_positions():
    g = torch.Generator().manual_seed(11)
    z = torch.randn(33, 8, generator=g, dtype=torch.float64)
    p = torch.rand(33, generator=g, dtype=torch.float64)
    ours, g_ours = grad_of(RelationalRankLoss(), z, p)
    ref, g_ref = grad_of(naive_ral, z, p)
    assert abs(num(ours - ref)) < TOL and (g_ours - g_ref).abs().max() < TOL


def test_ral_all_positions_equal_is_infonce():
    z, _ = two_view_batch(6, 8, 4, 3)
    p = torch.full((12,), 0.5, dtype=torch.float64)
    logits = off_diagonal(F.normalize(z, dim=1) @ F.normalize(z, dim=1).T / 0.1)
    infonce = (torch.logsumexp(logits, dim=1, keepdim=True) - logits).mean()
    ours = RelationalRankLoss(soft_weight=False)(z, p)
    assert abs(num(ours - infonce)) < 1e-10
    assert abs(num(RelationalRankLoss()(z, p) - 0.5 * infonce)) < 1e-10  # w = sigmoid(0) = 0.5


def test_ral_lower_when_embeddings_ordered_by_position():
    n = 32
    p = torch.arange(1, n + 1, dtype=torch.float64) / n
    theta = math.pi * p  # angles in (0, pi]: cosine similarity decreases with |p_a - p_b|
    z = torch.zeros(n, 8, dtype=torch.float64)
    z[:, 0], z[:, 1] = torch.cos(theta), torch.sin(theta)
    loss = RelationalRankLoss()
    ordered = num(loss(z, p))
    shuffled = [num(loss(z[torch.randperm(n, generator=torch.Generator().manual_seed(s))], p)) for s in range(5)]
    assert ordered < min(shuffled)


def test_ral_input_layouts_and_errors():
    z, p = two_view_batch(5, 8, 4, 9)
    b = 5
    stacked = torch.stack([z[:b], z[b:]], dim=1)  # (B, V, D)
    loss = RelationalRankLoss()
    assert torch.allclose(loss(stacked, p[:b]), loss(z, p), atol=1e-12)
    assert torch.allclose(loss(z, p[:, None]), loss(z, p), atol=1e-12)
    with pytest.raises(ValueError):
        loss(z, p[:-1])
    with pytest.raises(ValueError):
        loss(z[:1], p[:1])
    with pytest.raises(ValueError):
        loss(z[0], p)
    with pytest.raises(ValueError):
        RelationalRankLoss(temperature=0.0)


# ---------------------------------------------------------------- OAL


@pytest.mark.parametrize("precise", [True, False])
@pytest.mark.parametrize("b,levels,seed", [(2, 4, 0), (6, 4, 1), (24, 8, 2), (50, 1000, 3)])
def test_oal_matches_naive_value_and_grad(precise, b, levels, seed):
    z, p = two_view_batch(b, 12, levels, seed)
    z = 3.0 * z + 5.0  # unnormalised, off-centre projections
    loss = OrdinalDirectionLoss(12, seed=seed, precise_distances=precise).double()
    v = loss.direction
    z1 = z.clone().requires_grad_(True)
    ours = loss(z1, p)
    g_z, g_v = torch.autograd.grad(ours, (z1, v))
    z2 = z.clone().requires_grad_(True)
    ref = naive_oal(z2, p, v)
    r_z, r_v = torch.autograd.grad(ref, (z2, v))
    assert abs(num(ours - ref)) < TOL
    assert (g_z - r_z).abs().max() < TOL
    assert (g_v - r_v).abs().max() < TOL


def test_oal_identical_embeddings_contribute_zero():
    z, p = two_view_batch(4, 6, 4, 5)
    z[1] = z[0]  # an identical pair; F.normalize of the zero difference gives 0
    p[1] = p[0] + 0.25
    loss = OrdinalDirectionLoss(6, seed=0).double()
    z1 = z.clone().requires_grad_(True)
    ours = loss(z1, p)
    ours.backward()
    assert abs(num(ours - naive_oal(z, p, loss.direction.detach()))) < TOL
    assert torch.isfinite(z1.grad).all()


def test_oal_float32_near_duplicates_match_float64_reference():
    # Pairs 1e-4 apart (relative): the |a|^2 + |b|^2 - 2ab identity in float32 alone would give wrong, spiky gradients.
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 128, generator=g, dtype=torch.float64) + 10.0
    z = torch.cat([base, base + 1e-4 * torch.randn(64, 128, generator=g, dtype=torch.float64)])
    pos = torch.rand(64, generator=g, dtype=torch.float64)
    p = torch.cat([pos, pos + 1e-3])
    loss = OrdinalDirectionLoss(128, seed=0)
    v = loss.direction.detach().double()
    ref, g_ref = grad_of(lambda zz, pp: naive_oal(zz, pp, v), z, p)
    ours, g_ours = grad_of(loss, z.float(), p.float())
    assert abs(num(ours) - num(ref)) < 1e-6
    assert (g_ours.double() - g_ref).abs().max() < 1e-3 * g_ref.abs().max()


def test_oal_zero_pairs_is_finite_zero_with_grad_path():
    z = torch.randn(10, 6, requires_grad=True)
    loss = OrdinalDirectionLoss(6, seed=0)
    value = loss(z, torch.full((10,), 0.3))
    assert value.requires_grad and num(value) == 0.0
    value.backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(loss.direction.grad).all()
    assert num(z.grad.abs().max()) == 0.0


def test_oal_aligned_embeddings_reach_minus_one():
    loss = OrdinalDirectionLoss(16, seed=3)
    p = torch.arange(1, 21, dtype=torch.float32) / 20
    z = p[:, None] * loss.direction.detach()[None, :] * 10.0 + 2.0
    with torch.no_grad():
        assert abs(num(loss(z, p)) + 1.0) < 1e-4
        assert abs(num(loss(z.flip(0), p)) - 1.0) < 1e-4


def test_oal_direction_state_dict_roundtrip_and_seed():
    a, b = OrdinalDirectionLoss(32, seed=1), OrdinalDirectionLoss(32, seed=2)
    assert torch.equal(a.direction, OrdinalDirectionLoss(32, seed=1).direction)
    assert not torch.equal(a.direction, b.direction)
    buffer = io.BytesIO()
    torch.save(CoralLoss(32, seed=1).state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    assert set(state) == {"ordinal.direction"}
    restored = CoralLoss(32, seed=2)
    restored.load_state_dict(state)
    assert torch.equal(restored.ordinal.direction, a.direction)
    z, p = two_view_batch(6, 32, 4, 0, dtype=torch.float32)
    assert torch.equal(restored(z, p), CoralLoss(32, seed=1)(z, p))


def test_oal_direction_trained_by_the_same_optimiser():
    torch.manual_seed(0)
    net = torch.nn.Linear(8, 16)
    loss = CoralLoss(16)
    opt = torch.optim.SGD(list(net.parameters()) + list(loss.parameters()), lr=0.1, momentum=0.9)
    before = loss.ordinal.direction.detach().clone()
    x = torch.randn(12, 8)
    p = torch.arange(1, 7, dtype=torch.float32).repeat(2) / 6
    opt.zero_grad()
    loss(net(x), p).backward()
    opt.step()
    assert not torch.equal(before, loss.ordinal.direction.detach())


def test_oal_bad_feature_dim():
    with pytest.raises(ValueError):
        OrdinalDirectionLoss(8)(torch.randn(4, 6), torch.rand(4))
    with pytest.raises(ValueError):
        OrdinalDirectionLoss(0)


# ---------------------------------------------------------------- CoralLoss


def test_coral_total_and_terms():
    z, p = two_view_batch(8, 16, 4, 2)
    loss = CoralLoss(16, alpha=0.7, seed=4).double()
    total = loss(z, p)
    ral = naive_ral(z, p)
    oal = naive_oal(z, p, loss.ordinal.direction.detach())
    assert abs(num(total - (ral + 0.7 * oal))) < TOL
    assert set(loss.last_terms) == {"loss", "ral", "oal"}
    assert not any(t.requires_grad for t in loss.last_terms.values())
    assert abs(num(loss.last_terms["ral"] - ral)) < TOL and abs(num(loss.last_terms["oal"] - oal)) < TOL
    assert num(loss.last_terms["loss"]) == num(total)


def test_losses_finite_float32_n1024():
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(1, 11, (512,), generator=g).float() / 10
    p = torch.cat([pos, pos])
    z = torch.randn(1024, 512, generator=g).requires_grad_(True)
    coral = CoralLoss(512, seed=0)
    value = coral(z, p) + PositionalContrastiveLoss()(z, p)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all()
    assert torch.isfinite(coral.ordinal.direction.grad).all()
    z64 = z.detach().double()
    ref = CoralLoss(512, seed=0).double()(z64, p.double()) + PositionalContrastiveLoss()(z64, p.double())
    assert abs(num(value) - num(ref)) < 1e-4 * max(1.0, abs(num(ref)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    z, p = two_view_batch(64, 32, 8, 1, dtype=torch.float32)
    for make in (lambda: CoralLoss(32, seed=0), PositionalContrastiveLoss):
        cpu_val, cpu_grad = grad_of(make(), z, p)
        gpu_val, gpu_grad = grad_of(make().cuda(), z.cuda(), p.cuda())
        assert abs(num(cpu_val) - num(gpu_val)) < 1e-4
        assert (cpu_grad - gpu_grad.cpu()).abs().max() < 1e-4


# ---------------------------------------------------------------- PCL


@pytest.mark.parametrize("base_tau", [0.07, None])
@pytest.mark.parametrize("b,levels,seed,threshold", [(2, 4, 0, 0.35), (12, 8, 1, 0.35), (20, 1000, 2, 0.1)])
def test_pcl_matches_naive(base_tau, b, levels, seed, threshold):
    z, p = two_view_batch(b, 10, levels, seed)
    loss = PositionalContrastiveLoss(threshold=threshold, temperature=0.1, base_temperature=base_tau)
    ours, g_ours = grad_of(loss, z, p)
    ref, g_ref = grad_of(lambda zz, pp: naive_pcl(zz, pp, threshold, 0.1, base_tau or 0.1), z, p)
    assert abs(num(ours - ref)) < TOL
    assert (g_ours - g_ref).abs().max() < TOL


def test_pcl_positives_strict_threshold_and_views():
    # Two slices exactly `threshold` apart are NOT positives; the other view always is.
    p = torch.tensor([0.25, 0.5, 0.25, 0.5], dtype=torch.float64)
    z = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = PositionalContrastiveLoss(threshold=0.25, base_temperature=None)(z, p)
    s = off_diagonal(F.normalize(z, dim=1) @ F.normalize(z, dim=1).T / 0.1)
    view_partner = torch.tensor([1, 2, 0, 1])  # column of the other view in each off-diagonal row
    log_prob = s - torch.logsumexp(s, dim=1, keepdim=True)
    expected = -log_prob[torch.arange(4), view_partner].mean()
    assert abs(num(ours - expected)) < 1e-12


def test_supcon_without_positives_is_zero_not_nan():
    logits = torch.randn(5, 4, requires_grad=True)
    value = supcon_from_positives(logits, torch.zeros(5, 4, dtype=torch.bool))
    value.backward()
    assert num(value) == 0.0 and torch.isfinite(logits.grad).all()
