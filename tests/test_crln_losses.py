"""Tests of CRLN's losses: supervised Dice+CE on y and M, confidence-weighted pseudo-label CE, CPS."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from volssl.losses import ConfidenceWeightedCELoss, CPSLoss, CRLNSupervisedLoss
from volssl.losses.crln import as_label_map

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def test_supervised_loss_formula() -> None:
    torch.manual_seed(0)
    y, m = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    g = torch.randint(0, 3, (2, 1, 4, 4, 4))
    ref = DiceCELoss(to_onehot_y=True, softmax=True)
    loss = CRLNSupervisedLoss()
    torch.testing.assert_close(loss(y, g, m), 0.5 * (ref(y, g) + ref(m, g)))
    torch.testing.assert_close(loss(y, g), 0.5 * ref(y, g))
    torch.testing.assert_close(loss(y, g[:, 0].float(), m), loss(y, g, m))  # (B, *S) labels, any dtype


def test_as_label_map_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="1 channel"):
        as_label_map(torch.zeros(2, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="spatial"):
        as_label_map(torch.zeros(4, 4))


def test_confidence_weighted_ce() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 3, 3, 2)
    target = torch.randint(0, 2, (2, 3, 3, 2))
    conf = torch.full((2, 3, 3, 2), 0.5)
    conf[0, 0] = 0.99  # 6 of 18 voxels confident in sample 0, none in sample 1
    loss = ConfidenceWeightedCELoss(threshold=0.97)
    ce = F.cross_entropy(logits, target, reduction="none").flatten(1).mean(1)
    expected = (ce[0] * 6 / 18 + ce[1] * 0.0) / 2
    torch.testing.assert_close(loss(logits, target, conf), expected)
    torch.testing.assert_close(loss.last_weights, torch.tensor([1 / 3, 0.0]))
    torch.testing.assert_close(loss(logits, target.unsqueeze(1), conf.unsqueeze(1)), expected)
    with pytest.raises(ValueError, match="confidence"):
        loss(logits, target, conf[:, :2])


def _clustered(n_per_class: int = 200, dim: int = 8, spread: float = 1.0, seed: int = 0):
    """Embeddings of 2 classes (B=1, spatial (n, 2, 1)): class means +-e_0 plus noise of the given spread."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(1, n_per_class, 2, 1, dtype=torch.long)
    labels[:, :, 1] = 1
    centre = torch.zeros(dim)
    centre[0] = 1.0
    emb = torch.randn(1, dim, n_per_class, 2, 1, generator=g) * spread
    emb[:, :, :, 0] += centre.view(1, dim, 1, 1)
    emb[:, :, :, 1] -= centre.view(1, dim, 1, 1)
    probs = torch.full((1, 2, n_per_class, 2, 1), 0.5)  # every voxel hard
    valid = torch.ones_like(labels, dtype=torch.bool)
    return emb.requires_grad_(True), labels, valid, probs


def test_cps_lower_when_anchors_sit_at_their_class_mean() -> None:
    loss = CPSLoss(num_anchors=32, num_negatives=64)
    spread_out = loss(*_clustered(spread=1.0))
    at_mean = loss(*_clustered(spread=1e-3))
    assert torch.isfinite(spread_out) and torch.isfinite(at_mean)
    assert at_mean < spread_out
    # anchors at their class mean, negatives at the opposite mean: cos = 1 vs -1, tau = 0.5
    assert at_mean.item() == pytest.approx(math.log(1 + 64 * math.exp(-4.0)), rel=1e-3)
    assert loss.last_num_anchors == 64


def test_cps_lower_bound_is_reached_by_a_simplex_of_classes() -> None:
    """The floor judged against in the model card: 2.34 for 2 classes (tau 0.5, 512 negatives), 3.28 for 3. Collapsed
    classes on a regular simplex reach it; any other arrangement (here: random class points) stays above it."""
    loss = CPSLoss(num_anchors=8, num_negatives=512)
    assert loss.lower_bound(2) == pytest.approx(math.log(1 + 512 * math.exp(-4.0))) == pytest.approx(2.3397, abs=1e-4)
    assert loss.lower_bound(3) == pytest.approx(3.2768, abs=1e-4)
    assert loss.lower_bound(4) == pytest.approx(3.5994, abs=1e-4)
    assert loss.lower_bound(2) < loss.lower_bound(3) < math.log(513)
    with pytest.raises(ValueError):
        loss.lower_bound(1)
    simplex = torch.tensor([[1.0, 0.0], [-0.5, math.sqrt(3) / 2], [-0.5, -math.sqrt(3) / 2]])  # 3 unit vectors, cos -1/2
    g = torch.Generator().manual_seed(0)
    for points, expect_floor in ((simplex, True), (F.normalize(torch.randn(3, 2, generator=g), dim=1), False)):
        labels = torch.arange(3).repeat_interleave(20).reshape(1, 60, 1, 1)
        emb = points[labels[0, :, 0, 0]].t().reshape(1, 2, 60, 1, 1)
        probs = torch.full((1, 3, 60, 1, 1), 1 / 3)
        value = loss(emb, labels, torch.ones_like(labels, dtype=torch.bool), probs,
                     generator=torch.Generator().manual_seed(1)).item()
        if expect_floor:
            assert value == pytest.approx(loss.lower_bound(3), abs=1e-4)
        else:
            assert value > loss.lower_bound(3) + 0.05


def test_cps_empty_class_and_degenerate_cases_are_finite_with_graph() -> None:
    emb, labels, valid, probs = _clustered()
    probs3 = torch.cat([probs, torch.zeros_like(probs[:, :1])], dim=1)  # class 2 never occurs
    loss = CPSLoss(num_anchors=16, num_negatives=32)(emb, labels, valid, probs3)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0

    # a single present class: no negatives -> 0, finite, still in the graph
    emb1, _, valid1, probs1 = _clustered()
    zero = CPSLoss()(emb1, torch.zeros_like(labels), valid1, probs1)
    assert zero.item() == 0.0 and zero.requires_grad
    zero.backward()
    assert torch.isfinite(emb1.grad).all()
    # no hard voxel (student sure of every label) or no valid voxel -> 0
    emb2, labels2, valid2, _ = _clustered()
    sure = F.one_hot(labels2, 2).movedim(-1, 1).float()
    assert CPSLoss()(emb2, labels2, valid2, sure).item() == 0.0
    assert CPSLoss()(emb2, labels2, torch.zeros_like(valid2), sure).item() == 0.0


def test_cps_prototype_key_and_reproducibility() -> None:
    emb, labels, valid, probs = _clustered(spread=0.5)
    loss = CPSLoss(num_anchors=16, num_negatives=32, xi=0.6)
    torch.manual_seed(3)
    a = loss(emb, labels, valid, probs)
    torch.manual_seed(3)
    b = loss(emb, labels, valid, probs)
    assert a.item() == b.item()
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert loss(emb, labels, valid, probs, generator=g1).item() == loss(emb, labels, valid, probs, generator=g2).item()
    # prototypes that point away from the class means make the positive key worse
    bad = torch.zeros(2, 8)
    bad[0, 0], bad[1, 0] = -5.0, 5.0  # key (mu + 0.6 p) / 1.6 flips to the other class
    torch.manual_seed(3)
    with_bad = loss(emb, labels, valid, probs, prototypes=bad)
    assert with_bad > a
    with pytest.raises(ValueError, match="prototypes"):
        loss(emb, labels, valid, probs, prototypes=torch.zeros(3, 8))
