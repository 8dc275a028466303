"""Tests of volssl.networks: PCL's 2D U-Net, its encoder, the projection head and encoder-only loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from volssl.io.errors import VolsslInputError
from volssl.networks import (
    PretrainNet2d,
    ProjectionHead,
    UNet2d,
    UNetEncoder2d,
    load_encoder_weights,
    with_encoder_weights,
)

# torch 2.13 deprecates torch.jit; MONAI's ckpt_export still scripts by default, so scripting stays tested
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|trace|trace_method)` is deprecated")


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _closed_form_counts(f: int, in_channels: int = 1, classes: int = 4, proj: int = 512) -> tuple[int, int, int]:
    """(UNet2d, encoder, PretrainNet2d) parameter counts written out from the architecture description."""

    def conv(i: int, o: int, k: int = 3, bias: bool = True) -> int:
        return i * o * k * k + (o if bias else 0)

    w = [in_channels] + [f * 2**k for k in range(5)]
    bn = 2  # weight and bias per channel
    enc = sum(conv(w[k], w[k + 1]) + bn * w[k + 1] + conv(w[k + 1], w[k + 1]) + bn * w[k + 1] for k in range(4))
    enc += conv(w[4], w[5]) + conv(w[5], w[5])  # centre: conv 8f -> 16f, conv 16f -> 16f, no norm
    dec = sum(
        conv(w[k + 1], w[k], k=2) + conv(2 * w[k], w[k]) + bn * w[k] + conv(w[k], w[k]) + bn * w[k] for k in range(1, 5)
    )
    head = conv(f, classes, k=1, bias=False)
    projection = (16 * f) * (16 * f) + 16 * f + (16 * f) * proj + proj
    return enc + dec + head, enc, enc + projection


def _fill_random(module: nn.Module, seed: int) -> None:
    """Give every parameter and BN buffer distinct random values, so that copies are detectable."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.fill_(int(torch.randint(1, 1000, (1,), generator=g)))


def _clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------------
# architecture


@pytest.mark.parametrize("features", [8, 16])
@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_unet_output_shape(features: int, size: tuple[int, int]) -> None:
    net = UNet2d(in_channels=1, out_channels=4, features=features)
    y = net(torch.randn(2, 1, *size))
    assert y.shape == (2, 4, *size)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("features", [8, 16])
@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_encoder_levels(features: int, size: tuple[int, int]) -> None:
    enc = UNetEncoder2d(in_channels=2, features=features)
    levels = enc(torch.randn(3, 2, *size))
    assert isinstance(levels, list) and len(levels) == 5
    assert enc.channels == tuple(features * 2**k for k in range(5))
    assert enc.out_channels == 16 * features
    for k, t in enumerate(levels):
        assert t.shape == (3, features * 2**k, size[0] // 2**k, size[1] // 2**k)


def test_block_layout_follows_pcl() -> None:
    enc = UNetEncoder2d(1, 8)
    for level in enc.levels:
        for block in (level.conv1, level.conv2):
            assert isinstance(block.norm, nn.BatchNorm2d)
            assert isinstance(block.act, nn.LeakyReLU) and block.act.negative_slope == 0.01
            assert block.conv.kernel_size == (3, 3) and block.conv.padding == (1, 1)
    for block in (enc.center.conv1, enc.center.conv2):  # centre block: conv -> ReLU, no norm
        assert not hasattr(block, "norm")
        assert isinstance(block.act, nn.ReLU)
    net = UNet2d(1, 3, 8)
    assert net.head.kernel_size == (1, 1) and net.head.bias is None
    for block in net.decoder.blocks:
        assert block.up.kernel_size == (2, 2) and block.up.stride == (2, 2)


def test_kaiming_init() -> None:
    net = UNet2d(1, 4, features=16)
    gain = math.sqrt(2.0 / (1 + 0.01**2))
    conv = net.encoder.levels[3].conv2.conv  # 128 -> 128, fan-in 1152, 147k weights
    expected_std = gain / math.sqrt(conv.in_channels * 9)
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
            assert torch.count_nonzero(m.bias) == 0


def test_parameter_counts() -> None:
    # features=48, 1 input channel, 4 classes (ACDC): UNet2d 17,462,016 (encoder 10,602,384, decoder + head 6,859,632);
    # PretrainNet2d (proj 512) 11,586,704. features=16: UNet2d 1,942,784, encoder 1,179,440, PretrainNet2d 1,376,816.
    # These equal PCL's UNet2D / UNet2D_classification counts (conv biases kept before BN, 1x1 head without bias).
    for f, unet, enc, pre in ((48, 17_462_016, 10_602_384, 11_586_704), (16, 1_942_784, 1_179_440, 1_376_816)):
        assert _closed_form_counts(f) == (unet, enc, pre)
        assert _n_params(UNet2d(1, 4, features=f)) == unet
        assert _n_params(UNetEncoder2d(1, features=f)) == enc
        assert _n_params(PretrainNet2d(1, features=f, proj_dim=512)) == pre


def test_encoder_is_reusable() -> None:
    net = UNet2d(1, 4, features=8).eval()
    enc = UNetEncoder2d(1, features=8).eval()
    assert set(enc.state_dict()) == {k[len("encoder.") :] for k in net.state_dict() if k.startswith("encoder.")}
    enc.load_state_dict(net.encoder.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        for a, b in zip(enc(x), net.encoder(x)):
            assert torch.equal(a, b)
    # a non-multiple of 16 is fine for the encoder alone (sizes floored by the pools)
    assert enc(torch.randn(1, 1, 40, 56))[-1].shape == (1, 128, 2, 3)


def test_pretrain_net() -> None:
    net = PretrainNet2d(in_channels=1, features=8, proj_dim=512)
    z = net(torch.randn(4, 1, 64, 96))
    assert z.shape == (4, 512)
    assert net.projection.fc1.in_features == 128 and net.projection.fc1.out_features == 128
    # the encoder keys are those of UNet2d, the head lives under "projection."
    unet_enc = {k for k in UNet2d(1, 4, 8).state_dict() if k.startswith("encoder.")}
    pre_keys = set(net.state_dict())
    assert unet_enc == {k for k in pre_keys if k.startswith("encoder.")}
    assert pre_keys - unet_enc == {k for k in pre_keys if k.startswith("projection.")}
    z.sum().backward()
    assert net.encoder.levels[0].conv1.conv.weight.grad is not None


def test_projection_head() -> None:
    head = ProjectionHead(in_channels=32, hidden_dim=16, out_dim=8)
    x = torch.randn(2, 32, 5, 7)
    out = head(x)
    assert out.shape == (2, 8)
    pooled = x.mean(dim=(2, 3))
    expected = head.fc2(torch.relu(head.fc1(pooled)))
    assert torch.allclose(out, expected, atol=1e-6)
    assert ProjectionHead(32).hidden_dim == 32
    with pytest.raises(ValueError):
        ProjectionHead(32, out_dim=0)


def test_batch_of_one_eval_and_train() -> None:
    net = UNet2d(1, 3, features=8)
    net.eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        y1, y2 = net(x), net(x)
    assert y1.shape == (1, 3, 64, 64)
    assert torch.equal(y1, y2)
    net.train()  # the smallest BN map at 64x64 is 8x8, so a batch of one trains too
    net(x).mean().backward()


def test_non_divisible_input_raises() -> None:
    net = UNet2d(1, 2, features=8)
    with pytest.raises(ValueError, match="divisible by 16, got 60x64"):
        net(torch.randn(1, 1, 60, 64))
    with pytest.raises(ValueError, match="4D input"):
        net(torch.randn(1, 64, 64))


@pytest.mark.parametrize("norm", ["instance", None])
def test_norm_variants(norm: str | None) -> None:
    net = UNet2d(1, 2, features=8, norm=norm)
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 2, 32, 32)
    with pytest.raises(ValueError, match="norm must be"):
        UNet2d(1, 2, features=8, norm="group")


def test_torchscript_matches_eager() -> None:
    torch.manual_seed(0)
    net = UNet2d(1, 4, features=8).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(2, 1, 96, 128)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)
        assert scripted(x[:1]).shape == (1, 4, 96, 128)
    with pytest.raises(torch.jit.Error, match="divisible by 16"):
        scripted(torch.randn(1, 1, 60, 64))
    traced = torch.jit.trace(net, x)
    with torch.no_grad():
        assert torch.allclose(traced(x), net(x), atol=1e-5)
    pre = PretrainNet2d(1, 8).eval()
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(pre)(x), pre(x), atol=1e-5)
        levels = torch.jit.script(UNetEncoder2d(1, 8))(x)
    assert [t.shape[1] for t in levels] == [8, 16, 32, 64, 128]


def test_torch_export() -> None:
    net = UNet2d(1, 4, features=8).eval()
    x = torch.randn(2, 1, 64, 96)
    dims = {0: torch.export.Dim("b"), 2: 16 * torch.export.Dim("h"), 3: 16 * torch.export.Dim("w")}
    exported = torch.export.export(net, (x,), dynamic_shapes=(dims,))
    y = torch.randn(1, 1, 96, 128)
    with torch.no_grad():
        assert torch.allclose(exported.module()(y), net(y), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# encoder-only loading


@pytest.mark.parametrize("wrap", [None, "network", "net", "state_dict", "module"])
def test_load_encoder_only(tmp_path: Path, wrap: str | None) -> None:
    pre = PretrainNet2d(1, features=8)
    _fill_random(pre, seed=1)
    state = pre.state_dict()
    if wrap == "module":  # DataParallel-style names
        obj: object = {f"module.{k}": v for k, v in state.items()}
    elif wrap is None:
        obj = state
    else:
        obj = {wrap: state, "optimizer": torch.optim.SGD(pre.parameters(), lr=0.1).state_dict()}
    ckpt = tmp_path / "pretrained.pt"
    torch.save(obj, ckpt)

    net = UNet2d(1, 4, features=8)
    before = _clone_state(net)
    loaded = load_encoder_weights(net, ckpt)

    enc_keys = sorted(k for k in before if k.startswith("encoder."))
    assert loaded == enc_keys
    after = net.state_dict()
    for k in enc_keys:
        assert torch.equal(after[k], state[k]), k
        assert not torch.equal(after[k], before[k]) or k.endswith("num_batches_tracked"), k
    for k in before:
        if not k.startswith("encoder."):  # decoder and head untouched
            assert torch.equal(after[k], before[k]), k
    assert not any(k.startswith("projection.") for k in loaded)


def test_load_into_bare_encoder_and_explicit_key(tmp_path: Path) -> None:
    pre = PretrainNet2d(1, features=8)
    _fill_random(pre, seed=2)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"weights": pre.state_dict()}, ckpt)
    enc = UNetEncoder2d(1, features=8)
    loaded = load_encoder_weights(enc, ckpt, key="weights", target_prefix="")
    assert loaded == sorted(enc.state_dict())
    for k, v in enc.state_dict().items():
        assert torch.equal(v, pre.state_dict()[f"encoder.{k}"])
    with pytest.raises(VolsslInputError, match="key 'network' not found"):
        load_encoder_weights(enc, ckpt, key="network", target_prefix="")


def test_width_mismatch_names_file(tmp_path: Path) -> None:
    ckpt = tmp_path / "width16.pt"
    torch.save({"network": PretrainNet2d(1, features=16).state_dict()}, ckpt)
    net = UNet2d(1, 4, features=8)
    before = _clone_state(net)
    with pytest.raises(VolsslInputError, match=r"width16\.pt.*shape mismatch.*features") as err:
        load_encoder_weights(net, ckpt)
    assert str(ckpt) in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing half-loaded
    with pytest.raises(VolsslInputError, match="shape mismatch"):
        load_encoder_weights(net, ckpt, strict=False)


def test_missing_and_bad_files(tmp_path: Path) -> None:
    net = UNet2d(1, 4, features=8)
    missing = tmp_path / "nope.pt"
    hint = r"nope\.pt: pretrained encoder checkpoint not found: run configs/pretrain.json first"
    with pytest.raises(VolsslInputError, match=hint):
        load_encoder_weights(net, missing)
    with pytest.raises(ValueError):  # VolsslInputError is a ValueError
        with_encoder_weights(net, missing)

    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(VolsslInputError, match=r"tensor\.pt: not a state dict"):
        load_encoder_weights(net, tensor_file)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(VolsslInputError, match=r"garbage\.pt: cannot read checkpoint"):
        load_encoder_weights(net, garbage)

    no_encoder = tmp_path / "head_only.pt"
    torch.save({"network": ProjectionHead(16, out_dim=4).state_dict()}, no_encoder)
    with pytest.raises(VolsslInputError, match=r"head_only\.pt: no entries starting with 'encoder\.'"):
        load_encoder_weights(net, no_encoder)

    odd = tmp_path / "odd.pt"
    torch.save({"epoch": torch.tensor(3), "meta": {"a": 1}}, odd)
    with pytest.raises(VolsslInputError, match=r"odd\.pt"):
        load_encoder_weights(net, odd)


def test_strict_and_partial(tmp_path: Path) -> None:
    pre = PretrainNet2d(1, features=8)
    _fill_random(pre, seed=3)
    state = pre.state_dict()
    dropped = "encoder.center.conv2.conv.bias"
    del state[dropped]
    ckpt = tmp_path / "partial.pt"
    torch.save(state, ckpt)
    net = UNet2d(1, 4, features=8)
    with pytest.raises(VolsslInputError, match="missing in the checkpoint.*center.conv2.conv.bias"):
        load_encoder_weights(net, ckpt)
    before = net.state_dict()[dropped].clone()
    loaded = load_encoder_weights(net, ckpt, strict=False)
    assert dropped not in loaded and len(loaded) == len([k for k in state if k.startswith("encoder.")])
    assert torch.equal(net.state_dict()[dropped], before)


def test_with_encoder_weights(tmp_path: Path) -> None:
    net = UNet2d(1, 4, features=8)
    before = _clone_state(net)
    assert with_encoder_weights(net, None) is net
    assert with_encoder_weights(net, "") is net
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())

    pre = PretrainNet2d(1, features=8)
    _fill_random(pre, seed=4)
    ckpt = tmp_path / "model_final.pt"
    torch.save({"network": pre.state_dict()}, ckpt)
    assert with_encoder_weights(net, str(ckpt)) is net
    w = "encoder.levels.0.conv1.conv.weight"
    assert torch.equal(net.state_dict()[w], pre.state_dict()[w])
    # the loaded network still scripts and runs
    net.eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(net)(x), net(x), atol=1e-5)
