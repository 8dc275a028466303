"""Tests of SAL's losses (local alignment, windowed, global positional), its network and the encoder transfer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from volssl.losses import GlobalPositionalLoss, LocalAlignmentLoss, SalLoss, embedding_cosine, windows_to_batch
from volssl.networks import PositionalHead, SalPretrainNet2d, UNet2d, with_encoder_weights

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def _maps(b: int = 2, c: int = 8, h: int = 8, w: int = 6, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _naive_la(x_i: torch.Tensor, x_j: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    """Full LA of one pair of maps (c, H, W), written directly from the formula."""
    a = x_i.flatten(1)
    b = x_j.flatten(1)
    a = a / a.norm(dim=0, keepdim=True)
    b = b / b.norm(dim=0, keepdim=True)
    sim = a.T @ b  # (hw, hw)
    rows = (1 - sim.max(dim=1).values).abs().mean()
    if not symmetric:
        return rows
    cols = (1 - sim.max(dim=0).values).abs().mean()
    return (rows + cols) / 2


def _naive_windowed(x_i: torch.Tensor, x_j: torch.Tensor, r: int, symmetric: bool = True) -> torch.Tensor:
    """Mean over pairs and over the r x r windows of the full LA of corresponding windows, with Python loops."""
    _, _, height, width = x_i.shape
    h, w = height // r, width // r
    losses = []
    for n in range(x_i.shape[0]):
        for u in range(r):
            for v in range(r):
                win = (slice(None), slice(u * h, (u + 1) * h), slice(v * w, (v + 1) * w))
                losses.append(_naive_la(x_i[n][win], x_j[n][win], symmetric))
    return torch.stack(losses).mean()


# ---------------------------------------------------------------- local alignment


@pytest.mark.parametrize("window", [1, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_identical_maps_give_zero(window, symmetric):
    x = _maps()
    loss = LocalAlignmentLoss(window, symmetric)
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-12)
    # normalised inside, per location: a positive rescaling of each location changes nothing
    scale = torch.rand(2, 1, 8, 6, dtype=torch.float64) + 0.5
    assert float(loss(x, 3.0 * x * scale)) == pytest.approx(0.0, abs=1e-12)
    assert float(loss(x, -x)) > 0.2  # anti-aligned copies: the best matches are other locations, far from cosine 1


def test_spatial_shuffle_keeps_full_loss_zero_but_not_windowed():
    x = _maps(b=3)
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(1))
    shuffled = x.flatten(2)[:, :, perm].reshape(x.shape)
    assert not torch.equal(shuffled, x)
    # every row / column maximum is still a perfect match (1): the max over a row is permutation invariant
    assert float(LocalAlignmentLoss(1)(x, shuffled)) == pytest.approx(0.0, abs=1e-12)
    assert float(LocalAlignmentLoss(1, symmetric=False)(shuffled, x)) == pytest.approx(0.0, abs=1e-12)
    # locations moved to another window lose their match in the windowed loss
    assert float(LocalAlignmentLoss(2)(x, shuffled)) > 0.05


def test_window_one_equals_full_and_naive():
    x_i, x_j = _maps(seed=2), _maps(seed=3)
    torch.testing.assert_close(windows_to_batch(x_i, 1), x_i.flatten(2), rtol=0, atol=0)
    for symmetric in (True, False):
        full = LocalAlignmentLoss(1, symmetric)(x_i, x_j)
        naive = torch.stack([_naive_la(a, b, symmetric) for a, b in zip(x_i, x_j)]).mean()
        torch.testing.assert_close(full, naive, rtol=1e-12, atol=1e-12)
        # the windowed code path at r = 1 is the full loss
        torch.testing.assert_close(LocalAlignmentLoss(1, symmetric)(x_i, x_j), _naive_windowed(x_i, x_j, 1, symmetric))


@pytest.mark.parametrize("window", [2, 4])
@pytest.mark.parametrize("symmetric", [True, False])
def test_windowed_equals_mean_of_per_window_losses(window, symmetric):
    x_i, x_j = _maps(h=8, w=12, seed=4), _maps(h=8, w=12, seed=5)
    windowed = LocalAlignmentLoss(window, symmetric)(x_i, x_j)
    torch.testing.assert_close(windowed, _naive_windowed(x_i, x_j, window, symmetric), rtol=1e-12, atol=1e-12)
    full = LocalAlignmentLoss(1, symmetric)(x_i, x_j)
    # fewer candidates per location: the best match can only get worse
    assert float(windowed) > float(full) + 1e-3


def test_windows_layout():
    x = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).reshape(2, 1, 4, 6)
    out = windows_to_batch(x, 2)
    assert out.shape == (8, 1, 6)
    # window (u=1, v=0) of map 1 is entry (1 * 2 + 1) * 2 + 0 = 6: rows 2..3, columns 0..2
    torch.testing.assert_close(out[6, 0], x[1, 0, 2:4, 0:3].flatten())


def test_similarity_size_drops_by_r_squared():
    x = _maps(b=2, h=8, w=8, dtype=torch.float32)
    sizes = {r: LocalAlignmentLoss(r).similarity(x, x).numel() for r in (1, 2, 4)}
    assert sizes[1] == 2 * 64 * 64 and sizes[2] * 4 == sizes[1] and sizes[4] * 16 == sizes[1]


def test_local_alignment_errors_and_dtype():
    x = _maps(h=6, w=6, dtype=torch.float32)
    with pytest.raises(ValueError, match="divisible by window=4"):
        LocalAlignmentLoss(4)(x, x)
    with pytest.raises(ValueError, match="same shape"):
        LocalAlignmentLoss(1)(x, x[:, :, :4])
    with pytest.raises(ValueError, match="positive integer"):
        LocalAlignmentLoss(0)
    with pytest.raises(ValueError, match="B, c, H, W"):
        windows_to_batch(x[0], 1)
    assert LocalAlignmentLoss(1)(x.half(), x.half()).dtype == torch.float32


@pytest.mark.parametrize("window", [1, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_local_alignment_gradients_match_autograd_through_max(window, symmetric):
    x_i = _maps(seed=6).requires_grad_(True)
    x_j = _maps(seed=7).requires_grad_(True)
    LocalAlignmentLoss(window, symmetric)(x_i, x_j).backward()
    grads = (x_i.grad.clone(), x_j.grad.clone())
    for g in grads:
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    # the loss recomputes the matched cosines instead of differentiating max over A: same gradient
    x_i.grad = x_j.grad = None
    _naive_windowed(x_i, x_j, window, symmetric).backward()
    torch.testing.assert_close(grads[0], x_i.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[1], x_j.grad, rtol=1e-10, atol=1e-12)
    if not symmetric:  # x_j only receives gradient at the best-matching locations
        assert (grads[1].abs().sum(dim=1) == 0).any()


# ---------------------------------------------------------------- global positional


def test_global_positional_regression_values_and_errors():
    p_i = torch.tensor([0.2, 0.5, 0.9])
    p_j = torch.tensor([0.3, 0.4, 0.9])
    pred = torch.tensor([0.1, 0.0, 0.2])
    # the earlier form: MSE to the raw offset
    expected = ((0.1 - 0.1) ** 2 + (0.0 + 0.1) ** 2 + 0.2**2) / 3
    raw = GlobalPositionalLoss("relative", standardize=False)
    assert float(raw(pred, p_i, p_j)) == pytest.approx(expected, abs=1e-7)
    assert float(raw(pred[:, None], p_i, p_j)) == pytest.approx(expected, abs=1e-7)
    # standardised: the offsets (0.1, -0.1, 0) have root mean square sqrt(2/3) * 0.1, the target is unit-scaled
    target = torch.tensor([0.1, -0.1, 0.0]) / (0.1 * (2 / 3) ** 0.5)
    assert float((target**2).mean()) == pytest.approx(1.0, abs=1e-6)
    rel = GlobalPositionalLoss("relative")
    assert float(rel(pred, p_i, p_j)) == pytest.approx(float(((pred - target) ** 2).mean()), abs=1e-6)
    assert float(rel(target, p_i, p_j)) == pytest.approx(0.0, abs=1e-10)
    # absolute: positions (0.2, 0.5, 0.9, 0.3, 0.4, 0.9) centred and scaled by their root mean square
    both = torch.stack([p_i, p_j], dim=1)
    assert float(GlobalPositionalLoss("absolute", standardize=False)(both + 0.1, p_i, p_j)) == pytest.approx(0.01)
    centred = both - both.mean()
    standard = centred / centred.pow(2).mean().sqrt()
    assert float(GlobalPositionalLoss("absolute")(standard, p_i, p_j)) == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="relative mode expects"):
        GlobalPositionalLoss("relative")(both, p_i, p_j)
    with pytest.raises(ValueError, match="absolute mode expects"):
        GlobalPositionalLoss("absolute")(pred, p_i, p_j)
    with pytest.raises(ValueError, match="contrastive mode expects"):
        GlobalPositionalLoss("contrastive")(pred, p_i, p_j)
    with pytest.raises(ValueError, match="mode"):
        GlobalPositionalLoss("ordinal")


def _naive_contrastive(z_i, z_j, p_i, p_j, threshold, tau):
    """SupCon over the 2B projections with positives |p_a - p_b| <= threshold, written out with loops."""
    z = torch.cat([z_i, z_j])
    p = torch.cat([p_i, p_j]).tolist()
    z = z / z.norm(dim=1, keepdim=True)
    n = z.shape[0]
    per_anchor = []
    for a in range(n):
        others = [k for k in range(n) if k != a]
        log_den = torch.logsumexp(torch.stack([z[a] @ z[k] / tau for k in others]), 0)
        pos = [b for b in others if abs(p[a] - p[b]) <= threshold + 1e-9]
        if pos:
            per_anchor.append(-torch.stack([z[a] @ z[b] / tau - log_den for b in pos]).mean())
    return torch.stack(per_anchor).mean()


def test_global_positional_contrastive_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    # two subjects: pairs of nearby slices; slices of the other subject at close positions are positives too
    p_i = torch.tensor([0.1, 0.5, 0.9, 0.12, 0.55, 0.3], dtype=torch.float64)
    p_j = torch.tensor([0.2, 0.45, 0.85, 0.15, 0.6, 0.3], dtype=torch.float64)
    loss = GlobalPositionalLoss("contrastive", threshold=0.1, temperature=0.5)(z, p_i, p_j)
    naive = _naive_contrastive(z[:, 0], z[:, 1], p_i, p_j, 0.1, 0.5)
    torch.testing.assert_close(loss, naive, rtol=1e-10, atol=1e-12)
    (grad,) = torch.autograd.grad(loss, z)
    (naive_grad,) = torch.autograd.grad(_naive_contrastive(z[:, 0], z[:, 1], p_i, p_j, 0.1, 0.5), z)
    torch.testing.assert_close(grad, naive_grad, rtol=1e-10, atol=1e-12)
    # a gap of exactly the threshold on the k/S grid is a positive despite float rounding (0.4 - 0.3 > 0.1)
    edge = GlobalPositionalLoss("contrastive", threshold=0.1)
    z2 = torch.randn(2, 2, 4, generator=g)
    a, b = torch.tensor([0.3, 0.8], dtype=torch.float64), torch.tensor([0.4, 0.95], dtype=torch.float64)
    assert abs(float(b[0] - a[0])) > 0.1  # one pair at t on the k/S grid (above t in float64), one beyond
    z2 = z2.double()
    torch.testing.assert_close(edge(z2, a, b), _naive_contrastive(z2[:, 0], z2[:, 1], a, b, 0.1, 0.1))
    assert float(edge(z2, a, b)) > 0
    # no positive at all: 0 (still connected to the graph), not NaN
    assert float(GlobalPositionalLoss("contrastive", threshold=0.05)(z2, a, b)) == 0


def test_contrastive_gp_penalises_collapse():
    """A collapsed projection (all slices alike) costs log(2B - 1); one that separates positions costs less: the
    repulsion the local alignment loss lacks."""
    b = 8
    p_i = torch.linspace(0.05, 0.95, b)
    p_j = p_i + 0.02
    loss = GlobalPositionalLoss("contrastive", threshold=0.1, temperature=0.1)
    collapsed = torch.ones(b, 2, 3)
    assert float(loss(collapsed, p_i, p_j)) == pytest.approx(math.log(2 * b - 1), rel=1e-6)
    angle = torch.stack([p_i, p_j], dim=1) * math.pi
    spread = torch.stack([torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)], dim=2)
    assert float(loss(spread, p_i, p_j)) < 0.5 * math.log(2 * b - 1)


def test_embedding_cosine():
    x = torch.randn(2, 4, 3, 3)
    const = torch.ones(2, 4, 3, 3) * torch.tensor([1.0, -2.0, 0.5, 3.0])[None, :, None, None]
    assert float(embedding_cosine(const, 2 * const)) == pytest.approx(1.0, abs=1e-6)
    u = F.normalize(torch.cat([x, -x]).transpose(0, 1).reshape(4, -1), dim=0)
    assert float(embedding_cosine(x, -x)) == pytest.approx(float((u.T @ u).mean()), abs=1e-6)
    assert float(embedding_cosine(x, -x)) == pytest.approx(0.0, abs=1e-6)  # opposite pairs cancel


def _toy_features(p: torch.Tensor, freqs: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """Synthetic 'pooled encoder features' of slices at positions p: smooth nonlinear codes of p, (B, 16)."""
    return torch.cos(p[:, None] * freqs + phases)


def test_positional_head_learns_the_sign_of_the_offset():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    freqs, phases = torch.rand(16, generator=g) * 6 + 1, torch.rand(16, generator=g) * 6.28
    head = PositionalHead(16, hidden_dim=64, mode="relative")
    loss_fn = GlobalPositionalLoss("relative")
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)

    def pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        p_i = torch.rand(n, generator=g) * 0.8 + 0.1
        return p_i, p_i + (torch.rand(n, generator=g) * 0.2 - 0.1)  # offsets in [-t, t], t = 0.1

    for _ in range(400):
        p_i, p_j = pairs(128)
        loss = loss_fn(head(_toy_features(p_i, freqs, phases), _toy_features(p_j, freqs, phases)), p_i, p_j)
        opt.zero_grad()
        loss.backward()
        opt.step()
    p_i, p_j = pairs(2000)
    with torch.no_grad():
        pred = head(_toy_features(p_i, freqs, phases), _toy_features(p_j, freqs, phases))
    accuracy = float((torch.sign(pred) == torch.sign(p_j - p_i)).float().mean())
    print(f"sign accuracy {accuracy:.3f}")
    assert accuracy > 0.9, accuracy
    # swapping the two slices flips the predicted offset (the concatenation is ordered)
    with torch.no_grad():
        swapped = head(_toy_features(p_j, freqs, phases), _toy_features(p_i, freqs, phases))
    assert float((torch.sign(swapped) == torch.sign(p_i - p_j)).float().mean()) > 0.9


# ---------------------------------------------------------------- SalLoss and the network


@pytest.mark.parametrize("mode", ["contrastive", "relative", "absolute"])
def test_sal_loss_on_the_network_and_gradients(mode):
    torch.manual_seed(0)
    net = SalPretrainNet2d(1, features=4, embed_dim=16, position_mode=mode, position_dim=8)
    x_i, x_j = torch.randn(3, 1, 32, 32), torch.randn(3, 1, 32, 32)
    out = net(x_i, x_j)
    assert out["embedding"].shape == out["embedding_2"].shape == (3, 16, 4, 4)  # default level 3: H / 8
    assert out["position_pred"].shape == {"contrastive": (3, 2, 8), "relative": (3,), "absolute": (3, 2)}[mode]
    p_i, p_j = torch.tensor([0.1, 0.5, 0.8]), torch.tensor([0.2, 0.45, 0.8])
    loss_fn = SalLoss(window=2, position_mode=mode, gp_weight=0.5, la_weight=2.0)
    loss = loss_fn(out, p_i, p_j)
    terms = loss_fn.last_terms
    assert set(terms) == {"loss", "la", "gp", "la_cosine"} and not terms["loss"].requires_grad
    la = LocalAlignmentLoss(2)(out["embedding"], out["embedding_2"])
    gp = GlobalPositionalLoss(mode)(out["position_pred"], p_i, p_j)
    torch.testing.assert_close(terms["la"], la.detach())
    torch.testing.assert_close(terms["gp"], gp.detach())
    torch.testing.assert_close(terms["la_cosine"], embedding_cosine(out["embedding"], out["embedding_2"]))
    torch.testing.assert_close(loss.detach(), 2.0 * la.detach() + 0.5 * gp.detach())
    loss.backward()
    for part in (net.encoder, net.embedding, net.position_head):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    with pytest.raises(ValueError, match="lacks"):
        loss_fn({"embedding": out["embedding"]}, p_i, p_j)


def test_contrastive_head_is_one_mlp_per_slice():
    torch.manual_seed(0)
    head = PositionalHead(6, hidden_dim=5, mode="contrastive", out_dim=4)
    g_i, g_j = torch.randn(3, 6), torch.randn(3, 6)
    z = head(g_i, g_j)
    assert z.shape == (3, 2, 4)
    torch.testing.assert_close(z[:, 0], head._mlp(g_i))
    torch.testing.assert_close(z[:, 1], head._mlp(g_j))
    torch.testing.assert_close(head(g_j, g_i), z.flip(1))  # symmetric: no order between the two slices


def test_network_levels_and_errors():
    net = SalPretrainNet2d(1, features=4, embed_dim=8, level=2)
    out = net(torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32))
    assert out["embedding"].shape == (2, 8, 8, 8) and net.embedding.in_channels == 16
    # defaults: LA on level 3 (8f channels), the contrastive GP on the pooled bottleneck (16f)
    default = SalPretrainNet2d(1, features=4)
    assert default.embedding.in_channels == 32 and default.position_head.fc1.in_features == 64
    assert SalPretrainNet2d(1, features=4, level=-1).embedding.in_channels == 64
    with pytest.raises(ValueError, match="level"):
        SalPretrainNet2d(1, features=4, level=5)
    with pytest.raises(ValueError, match="position_mode"):
        SalPretrainNet2d(1, features=4, position_mode="ordinal")
    with pytest.raises(ValueError, match="same shape"):
        net(torch.randn(2, 1, 32, 32), torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="gp_weight"):
        SalLoss(gp_weight=-1)
    with pytest.raises(ValueError, match="la_weight"):
        SalLoss(la_weight=-1)


def test_unet_loads_the_encoder_from_a_sal_checkpoint(tmp_path):
    torch.manual_seed(0)
    sal = SalPretrainNet2d(1, features=4, embed_dim=8)
    sal.encoder.levels[0].conv1.norm.running_mean.fill_(0.25)  # a buffer must travel too
    path = tmp_path / "sal.pt"
    torch.save({"network": sal.state_dict()}, path)
    unet = UNet2d(1, 3, features=4)
    decoder_before = {k: v.clone() for k, v in unet.decoder.state_dict().items()}
    assert not torch.equal(unet.encoder.levels[0].conv1.conv.weight, sal.encoder.levels[0].conv1.conv.weight)
    loaded = with_encoder_weights(unet, path)  # strict: every encoder entry on both sides
    assert loaded is unet
    for name, value in sal.encoder.state_dict().items():
        torch.testing.assert_close(unet.encoder.state_dict()[name], value, rtol=0, atol=0)
    for name, value in unet.decoder.state_dict().items():
        torch.testing.assert_close(value, decoder_before[name], rtol=0, atol=0)
    assert F.mse_loss(unet(torch.randn(1, 1, 32, 32)), torch.zeros(1, 3, 32, 32)) >= 0  # still runs
