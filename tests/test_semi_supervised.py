"""Tests of the semi-supervised pieces: EMA teacher, strong view (CutMix etc.) and CRLNStep in a real trainer."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from torch import nn

from volssl.data import StrongView3d
from volssl.data.strong_aug import batch_cutmix, inplane_rescale, rot_flip_inplane, sample_beta
from volssl.engines import CRLNStep, ema_decay, ema_update_, make_teacher
from volssl.engines.semi_supervised import sigmoid_rampup
from volssl.losses import ConfidenceWeightedCELoss
from volssl.networks import CRLNNet, VNet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


# --- EMA ---------------------------------------------------------------------------------------------------------


def test_ema_decay_formula() -> None:
    assert ema_decay(0) == 0.0
    assert ema_decay(1) == 0.5
    assert ema_decay(9) == pytest.approx(0.9)
    assert ema_decay(1000) == 0.99
    assert ema_decay(100, max_decay=0.999) == pytest.approx(1 - 1 / 101)


def test_ema_update_matches_formula() -> None:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2))
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(3.0)
    before_t = [p.clone() for p in teacher.parameters()]
    d = ema_update_(teacher, student, step=3)
    assert d == pytest.approx(0.75)
    for pt, bt, ps in zip(teacher.parameters(), before_t, student.parameters()):
        torch.testing.assert_close(pt, 0.75 * bt + 0.25 * ps)
    torch.testing.assert_close(teacher[1].running_mean, torch.full((2,), 3.0))  # buffers copied
    with pytest.raises(ValueError, match="structure"):
        ema_update_(nn.Linear(2, 2), student, step=1)


# --- strong view -------------------------------------------------------------------------------------------------


def _coded_batch(b: int = 3, size=(8, 8, 4)):
    """Sample i: image filled with 10 * i + 1, pseudo-labels i, confidences i / 10."""
    x = torch.stack([torch.full((1, *size), 10.0 * i + 1) for i in range(b)])
    y = torch.stack([torch.full(size, i, dtype=torch.long) for i in range(b)])
    c = y.float() / 10
    return x, y, c


def test_cutmix_mixes_image_labels_and_confidences_with_the_same_box() -> None:
    x, y, c = _coded_batch()
    lam = torch.tensor([0.3, 0.5, 0.7])
    xm, ym, cm, box = batch_cutmix(x, y, c, lam, generator=torch.Generator().manual_seed(0))
    for i in range(3):
        partner = (i + 1) % 3
        inside = box[i]
        assert inside.any() and not inside.all()
        # full depth: the box is the same on every slice
        assert torch.equal(inside, inside[..., :1].expand_as(inside))
        side = math.sqrt(1 - lam[i].item())
        assert inside[..., 0].sum().item() == round(side * 8) ** 2
        assert torch.equal(xm[i, 0] == 10.0 * partner + 1, inside)
        assert torch.equal(ym[i] == partner, inside)
        assert torch.equal(cm[i] == partner / 10, inside)
    # a batch of one is left alone
    x1, y1, c1, box1 = batch_cutmix(x[:1], y[:1], c[:1], lam[:1])
    assert torch.equal(x1, x[:1]) and not box1.any()


def test_sample_beta() -> None:
    draws = sample_beta(4.0, 4000, torch.Generator().manual_seed(0))
    assert ((draws > 0) & (draws < 1)).all()
    assert draws.mean().item() == pytest.approx(0.5, abs=0.02)
    assert draws.var().item() == pytest.approx(1 / 36, rel=0.15)  # Beta(4, 4): variance 1 / 36


def test_geometric_steps_move_image_and_labels_together() -> None:
    torch.manual_seed(0)
    y = torch.randint(0, 3, (2, 8, 8, 4))
    x = y.float().unsqueeze(1)
    c = torch.rand(2, 8, 8, 4)
    xr, yr, cr = rot_flip_inplane(x, y, c, ks=[1, 3], flip_axes=[0, -1])
    assert torch.equal(xr[:, 0], yr.float())
    torch.testing.assert_close(cr[1], torch.rot90(c[1], 3, (0, 1)))
    xs, ys, cs = inplane_rescale(x, y, c, torch.tensor([1.0, 1.0]))
    assert torch.equal(ys, y) and torch.allclose(xs, x, atol=1e-5) and torch.allclose(cs, c)
    _, ys2, _ = inplane_rescale(x, y, c, torch.tensor([2.0, 0.5]))
    assert ys2.shape == y.shape and ys2.dtype == y.dtype


def test_strong_view_shapes_consistency_and_seed() -> None:
    x, y, c = _coded_batch(b=2, size=(8, 8, 4))
    view = StrongView3d(scale_range=None, brightness_range=(1.0, 1.0), noise_std=0.0)
    xs, ys, cs = view(x, y, c, generator=torch.Generator().manual_seed(1))
    assert xs.shape == x.shape and ys.shape == y.shape and ys.dtype == torch.long and cs.shape == c.shape
    torch.testing.assert_close(xs[:, 0], 10.0 * ys.float() + 1)  # image follows the labels through mix/rot/flip
    torch.testing.assert_close(cs, ys.float() / 10)
    full = StrongView3d()
    a = full(x, y.unsqueeze(1), c.unsqueeze(1), generator=torch.Generator().manual_seed(5))
    b = full(x, y.unsqueeze(1), c.unsqueeze(1), generator=torch.Generator().manual_seed(5))
    assert a[1].shape == (2, 1, 8, 8, 4) and a[2].shape == (2, 1, 8, 8, 4)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    with pytest.raises(ValueError, match="pseudo-labels"):
        full(x, y[:, :4], c)


# --- CRLNStep in a MONAI SupervisedTrainer -----------------------------------------------------------------------

SIZE = (16, 16, 32)


def _loaders(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labelled = [
        {"image": torch.randn(1, 1, *SIZE, generator=g), "label": (torch.rand(1, 1, *SIZE, generator=g) > 0.5).float()}
    ]
    unlabelled = [{"image": torch.randn(2, 1, *SIZE, generator=g)} for _ in range(2)]
    return labelled, unlabelled


def _run(mode: str, epochs: int = 2, **step_kwargs) -> tuple[CRLNStep, nn.Module, list[dict]]:
    torch.manual_seed(0)
    backbone = VNet(1, 2, n_filters=4)
    net = CRLNNet(backbone, 2, num_prototypes=4) if mode == "crln" else backbone
    labelled, unlabelled = _loaders()
    kwargs = {
        "rectify_after_iterations": 1,  # the second iteration uses rectified pseudo-labels and prototype keys
        "unsup_loss": ConfidenceWeightedCELoss(threshold=0.5),
        "cps_conf_threshold": 0.5,
        "generator": torch.Generator().manual_seed(0),
    }
    step = CRLNStep(net, unlabelled, mode=mode, **{**kwargs, **step_kwargs})
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=labelled,
        network=net,
        optimizer=optimizer,
        loss_function=None,
        iteration_update=step,
        decollate=False,
    )
    outputs: list[dict] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.run()
    return step, net, outputs


def _params_differ(a: nn.Module, b: nn.Module) -> bool:
    return any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("mode", ["crln", "mean_teacher", "supervised"])
def test_crln_step_in_supervised_trainer(mode: str) -> None:
    step, net, outputs = _run(mode)
    assert len(outputs) == 2
    for out in outputs:
        assert set(out) == {"pred", "label", "loss", "sup", "unsup", "cps", "a", "unsup_weight"}
        assert out["pred"].dim() == 5 and not out["pred"].requires_grad
        assert out["label"].shape == (out["pred"].shape[0], 1, *out["pred"].shape[2:])
        for key, value in out.items():
            if key not in ("pred", "label"):
                assert value.dim() == 0 and not value.requires_grad and torch.isfinite(value)
    last = outputs[-1]
    assert last["sup"] > 0
    if mode == "supervised":
        assert last["unsup"] == 0 and last["cps"] == 0 and last["unsup_weight"] == 0
    else:
        assert last["unsup"] > 0 and last["unsup_weight"] == 0.5  # no ramp-up by default (CRLN's code)
    if mode == "crln":
        assert last["cps"] > 0 and last["a"] != 0  # the rectifier scalar moved
        assert last["loss"].item() == pytest.approx((last["sup"] + 0.5 * last["unsup"] + 0.5 * last["cps"]).item())
        assert net.a.grad is None
    assert _params_differ(step.teacher, net)  # EMA with decay 2/3 at t = 2
    assert all(not p.requires_grad for p in step.teacher.parameters())
    # checkpoint round trip of the step (teacher + rectifier optimiser)
    state = step.state_dict()
    fresh = CRLNStep(net, [], mode=mode)
    fresh.load_state_dict(state)
    assert not _params_differ(fresh.teacher, step.teacher)


def test_crln_step_validation_and_combined_batches() -> None:
    backbone = VNet(1, 2, n_filters=4)
    crln = CRLNNet(VNet(1, 2, n_filters=4), 2, num_prototypes=4)
    with pytest.raises(ValueError, match="mode must be"):
        CRLNStep(backbone, mode="uamt")
    with pytest.raises(ValueError, match="CRLN network"):
        CRLNStep(backbone, mode="crln")
    with pytest.raises(ValueError, match="backbone"):
        CRLNStep(crln, mode="mean_teacher")
    step = CRLNStep(backbone, None, mode="mean_teacher")
    u = torch.randn(2, 1, *SIZE)
    assert step._unlabeled({"image": u[:1], "image_u": u}) is not None
    with pytest.raises(ValueError, match="unlabeled_loader"):
        step._unlabeled({"image": u})


# --- schedules in iterations, separate forwards ------------------------------------------------------------------


def test_sigmoid_rampup_is_uamts() -> None:
    """exp(-5 (1 - t / L)^2), clipped to [0, L]; UA-MT ramps its consistency weight this way over its whole run."""
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(250, 100) == 1.0
    assert sigmoid_rampup(-3, 100) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(7, 0) == 1.0


def test_mean_teacher_unsup_weight_ramps_up() -> None:
    _, _, outputs = _run("mean_teacher", epochs=3, unsup_rampup_iterations=4)
    for t, out in enumerate(outputs, start=1):
        w = 0.5 * math.exp(-5.0 * (1 - t / 4) ** 2)
        assert out["unsup_weight"].item() == pytest.approx(w)
        assert out["loss"].item() == pytest.approx((out["sup"] + w * out["unsup"]).item(), rel=1e-6)


def _record_calls(module: nn.Module, calls: list) -> None:
    module.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))


@pytest.mark.parametrize("separate", [True, False])
def test_crln_forwards_and_rectification_schedule(separate: bool) -> None:
    """Separate forwards (the official code): per iteration the student's backbone sees the labelled batch (1) and the
    strong view (2) one after the other, so BatchNorm normalises each with its own statistics, and only the labelled
    batch goes through the DIM; ``separate_forwards=False`` puts all three through one forward. The teacher uses the
    rectified logits (and runs its DIM) only after ``rectify_after_iterations``."""
    torch.manual_seed(0)
    net = CRLNNet(VNet(1, 2, n_filters=4), 2, num_prototypes=4)
    labelled, unlabelled = _loaders()
    step = CRLNStep(net, unlabelled, rectify_after_iterations=2, separate_forwards=separate,
                    unsup_loss=ConfidenceWeightedCELoss(threshold=0.5), cps_conf_threshold=0.5,
                    generator=torch.Generator().manual_seed(0))
    backbone_calls, dim_calls, teacher_dim_calls = [], [], []
    _record_calls(net.backbone.block_one, backbone_calls)  # forward_features does not fire forward hooks
    _record_calls(net.dim.stages[0], dim_calls)
    _record_calls(step.teacher.dim.stages[0], teacher_dim_calls)
    bn = net.backbone.block_one[0][1]
    assert isinstance(bn, nn.BatchNorm3d)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=3, train_data_loader=labelled, network=net,
                                optimizer=torch.optim.SGD(net.parameters(), lr=0.01), loss_function=None,
                                iteration_update=step, decollate=False)
    trainer.run()
    assert int(bn.num_batches_tracked) == (6 if separate else 3)
    assert backbone_calls == ([1, 2] * 3 if separate else [3] * 3)
    assert dim_calls == ([1] * 3 if separate else [3] * 3)
    assert teacher_dim_calls == [2]  # iteration 3 only: 3 > rectify_after_iterations = 2
