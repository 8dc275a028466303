"""Tests of CRLN's networks: the UA-MT V-Net, the 3D U-Net, the Dynamic Interaction Module and CRLNNet."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss
from torch import nn

from volssl.networks import CRLNNet, DIMStage, DynamicInteractionModule, UNet3dCRLN, VNet

# torch 2.13 deprecates torch.jit; MONAI's ckpt_export still scripts/traces, so both stay tested
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.(script|trace|trace_method)` is deprecated"),
    pytest.mark.usefixtures("one_thread"),  # tiny tensors: see conftest.one_thread
]


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _vnet_closed_form(f: int = 16, in_channels: int = 1, classes: int = 2) -> int:
    """Parameter count of UA-MT's V-Net written out from the architecture (BatchNorm: 2 per channel)."""

    def block(i: int, o: int, k: int) -> int:  # conv (or transposed conv) with bias + BN
        return i * o * k**3 + o + 2 * o

    def stage(n: int, i: int, o: int) -> int:
        return block(i, o, 3) + (n - 1) * block(o, o, 3)

    w = [f * 2**k for k in range(5)]
    enc = stage(1, in_channels, w[0]) + stage(2, w[1], w[1]) + stage(3, w[2], w[2]) + stage(3, w[3], w[3])
    enc += stage(3, w[4], w[4]) + sum(block(w[k], w[k + 1], 2) for k in range(4))
    dec = stage(3, w[3], w[3]) + stage(3, w[2], w[2]) + stage(2, w[1], w[1]) + stage(1, w[0], w[0])
    dec += sum(block(w[k + 1], w[k], 2) for k in range(4))
    head = w[0] * classes + classes
    return enc + dec + head


def test_vnet_parameter_count_matches_uamt() -> None:
    assert _n_params(VNet(1, 2, 16)) == _vnet_closed_form(16) == 9_448_866


@pytest.mark.parametrize("cls", [VNet, UNet3dCRLN])
def test_backbone_shapes_and_divisibility(cls) -> None:
    torch.manual_seed(0)
    net = cls(n_channels=2, n_classes=3, n_filters=4).eval()
    x = torch.randn(1, 2, 16, 16, 32)
    logits, fq, fh, ff = net.forward_features(x)
    assert logits.shape == (1, 3, 16, 16, 32)
    assert fq.shape == (1, 16, 4, 4, 8) and fh.shape == (1, 8, 8, 8, 16) and ff.shape == (1, 4, 16, 16, 32)
    assert net.feature_channels == (16, 8, 4)
    assert torch.equal(net(x), logits)
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.randn(1, 2, 16, 24, 16))
    with pytest.raises(ValueError, match="5D"):
        net(torch.randn(2, 32, 32, 16))


def test_vnet_options() -> None:
    assert isinstance(VNet(1, 2, 4, dropout=0).dropout, nn.Identity)
    assert isinstance(VNet(1, 2, 4).dropout, nn.Dropout3d) and VNet(1, 2, 4).dropout.p == 0.5
    assert not any(isinstance(m, nn.BatchNorm3d) for m in VNet(1, 2, 4, norm="none").modules())
    assert any(isinstance(m, nn.InstanceNorm3d) for m in VNet(1, 2, 4, norm="instance").modules())
    assert any(isinstance(m, nn.InstanceNorm3d) for m in UNet3dCRLN(1, 2, 4).modules())
    with pytest.raises(ValueError, match="norm"):
        VNet(1, 2, 4, norm="group")
    with pytest.raises(ValueError, match="dropout"):
        VNet(1, 2, 4, dropout=1.0)


@pytest.mark.parametrize("size", [(32, 32, 16), (48, 32, 32)])
def test_dim_output_shapes_for_any_window(size) -> None:
    """One module (built once) serves two window sizes: nothing is tied to the training patch."""
    torch.manual_seed(0)
    dim = DynamicInteractionModule(in_channels=(12, 6), num_classes=3, num_prototypes=5, embed_dim=8)
    quarter = tuple(s // 4 for s in size)
    half = tuple(s // 2 for s in size)
    rect_map, protos = dim([torch.randn(2, 12, *quarter), torch.randn(2, 6, *half)])
    assert rect_map.shape == (2, 3, *size)
    assert protos.shape == (2, 3, 5, 8)
    assert torch.isfinite(rect_map).all()


def test_dim_stage_keeps_voxel_order() -> None:
    """With a delta depthwise kernel the cue at a voxel depends on that voxel's feature only: changing one voxel
    changes the cue there and nowhere else (a reshape in place of the channels-last transpose would scramble it)."""
    torch.manual_seed(0)
    stage = DIMStage(in_channels=3, embed_dim=8, num_classes=2, num_prototypes=4).eval()
    with torch.no_grad():
        stage.separable.depthwise.weight.zero_()
        stage.separable.depthwise.weight[:, :, 1, 1, 1] = 1.0
    feat = torch.randn(1, 3, 4, 6, 5)
    protos = torch.randn(1, 8, 8)
    cue, new_protos = stage(feat, protos)
    assert cue.shape == (1, 2, 4, 6, 5) and new_protos.shape == (1, 8, 8)
    feat2 = feat.clone()
    feat2[0, :, 1, 4, 2] += 3.0
    cue2, _ = stage(feat2, protos)
    changed = (cue2 - cue).abs().amax(dim=(0, 1)) > 1e-6
    expected = torch.zeros(4, 6, 5, dtype=torch.bool)
    expected[1, 4, 2] = True
    assert torch.equal(changed, expected)


def test_dim_stage_official_layers_shared_by_the_classes() -> None:
    """The separable conv carries BatchNorm (depthwise -> BN -> ReLU -> pointwise -> BN -> ReLU, no conv biases) and
    maps each class's K attention maps to its cue with the same weights: swapping the two classes' prototype blocks
    swaps their cues (a conv mixing all n K maps, as before, would not)."""
    torch.manual_seed(0)
    stage = DIMStage(in_channels=3, embed_dim=8, num_classes=2, num_prototypes=4).eval()
    layers = [type(m).__name__ for m in stage.separable]
    assert layers == ["Conv3d", "BatchNorm3d", "ReLU", "Conv3d", "BatchNorm3d", "ReLU"]
    assert stage.separable.depthwise.bias is None and stage.separable.pointwise.bias is None
    assert stage.separable.depthwise.groups == 4 and stage.to_cue.out_channels == 1
    feat = torch.randn(1, 3, 4, 6, 5)
    protos = torch.randn(1, 8, 8)
    swapped = torch.cat([protos[:, 4:], protos[:, :4]], dim=1)
    with torch.no_grad():
        cue, new_protos = stage(feat, protos)
        cue_s, new_protos_s = stage(feat, swapped)
    assert cue.abs().sum() > 0
    torch.testing.assert_close(cue_s, cue.flip(1))
    torch.testing.assert_close(new_protos_s, torch.cat([new_protos[:, 4:], new_protos[:, :4]], dim=1))


def test_rectification_map_is_non_negative() -> None:
    """M = ReLU(ConvTranspose(cue)) as the official code, even where the cue is negative."""
    torch.manual_seed(0)
    dim = DynamicInteractionModule(in_channels=(12, 6), num_classes=3, num_prototypes=5, embed_dim=8)
    with torch.no_grad():
        dim.upsample[0].bias.fill_(-0.05)  # pushes part of the map below zero before the ReLU
        rect_map, _ = dim([torch.randn(2, 12, 4, 4, 4), torch.randn(2, 6, 8, 8, 8)])
        pre = dim.upsample[0](torch.zeros(1, 3, 8, 8, 8))
    assert isinstance(dim.upsample[1], nn.ReLU) and (pre < 0).any()
    assert rect_map.min() >= 0 and (rect_map == 0).any() and (rect_map > 0).any()


def test_representation_head_is_the_official_one() -> None:
    """conv3x3x3 (no bias) -> BatchNorm -> ReLU -> conv1x1x1, width E throughout."""
    from volssl.networks import RepresentationHead3d

    head = RepresentationHead3d(in_channels=4, out_dim=6)
    assert head.conv1.kernel_size == (3, 3, 3) and head.conv1.bias is None and head.conv1.out_channels == 6
    assert isinstance(head.norm, nn.BatchNorm3d) and head.conv2.kernel_size == (1, 1, 1)
    x = torch.zeros(1, 4, 5, 5, 5)
    x[0, :, 2, 2, 2] = 1.0  # a 3x3x3 receptive field: one voxel reaches its 26 neighbours
    head.eval()
    with torch.no_grad():
        reach = head.conv1(x).abs().sum(1)[0] > 0
        assert head(x).shape == (1, 6, 5, 5, 5)
    assert reach[1:4, 1:4, 1:4].all() and reach.sum() == 27


def _tiny_crln(**kwargs) -> CRLNNet:
    return CRLNNet(VNet(1, 2, n_filters=4, dropout=0.0), num_classes=2, num_prototypes=4, **kwargs)


def test_crln_net_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    net = _tiny_crln()
    assert net.rep_dim == 4  # E = K by default
    x = torch.randn(2, 1, 16, 16, 32)
    out = net.forward_train(x)
    assert out["logits"].shape == out["rect_map"].shape == out["rectified"].shape == (2, 2, 16, 16, 32)
    assert out["embedding"].shape == (2, 4, 16, 16, 32)
    assert out["prototypes"].shape == (2, 2, 4, 4)
    torch.testing.assert_close(out["rectified"], out["logits"] + (1 - net.a) * out["rect_map"])
    target = torch.randint(0, 2, (2, 1, 16, 16, 32))
    DiceCELoss(to_onehot_y=True, softmax=True)(out["rectified"], target).backward()
    assert net.a.grad is not None and net.a.grad.abs() > 0
    assert net.dim.upsample[0].weight.grad.abs().sum() > 0
    assert out["rect_map"].min() >= 0
    assert net.dim.prototypes.grad.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.forward_train(x)["rectified"])
        plain = net.forward_train(x, rectifier=False)  # the strong-view forward: no DIM
        assert set(plain) == {"logits", "embedding"}
        torch.testing.assert_close(plain["logits"], net.backbone(x))


def test_crln_net_trace_and_script() -> None:
    torch.manual_seed(0)
    net = _tiny_crln().eval()
    x1, x2 = torch.randn(1, 1, 16, 16, 16), torch.randn(1, 1, 32, 16, 16)
    traced = torch.jit.trace(net, x1)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        for x in (x1, x2):  # the trace generalises to another window size
            ref = net(x)
            torch.testing.assert_close(traced(x), ref)
            torch.testing.assert_close(scripted(x), ref)


def test_crln_net_validation() -> None:
    with pytest.raises(ValueError, match="forward_features"):
        CRLNNet(nn.Conv3d(1, 2, 1), num_classes=2)
    with pytest.raises(ValueError, match="num_classes=3"):
        CRLNNet(VNet(1, 2, 4), num_classes=3)
    net = CRLNNet(UNet3dCRLN(1, 2, 4), 2, num_prototypes=4, rep_dim=6).eval()
    with torch.no_grad():
        assert net.forward_train(torch.randn(1, 1, 16, 16, 32))["embedding"].shape == (1, 6, 16, 16, 32)
