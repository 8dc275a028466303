"""Mixed precision where the hardware has it, the shared iteration step, and the benchmark's FLOP count."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from torch import nn

from volssl.bench.peak import count_flops, device_peak
from volssl.engines import EvaluationStep, Precision, SupervisedStep, to_channels_last
from volssl.engines import precision as precision_module
from volssl.engines.precision import bf16_in_cpuinfo

pytestmark = pytest.mark.usefixtures("one_thread")


def test_native_bf16_is_read_from_the_cpu_flags():
    assert bf16_in_cpuinfo("processor: 0\nflags\t: fpu sse avx512f avx512_bf16 amx_tile\n", "x86_64")
    assert not bf16_in_cpuinfo("flags\t: fpu sse avx2 avx512f avx512bw\n", "x86_64")  # emulated bf16 only
    assert bf16_in_cpuinfo("Features\t: fp asimd bf16 i8mm\n", "aarch64")
    assert not bf16_in_cpuinfo("Features\t: fp asimd\n", "aarch64")
    assert not bf16_in_cpuinfo("", "x86_64")


def test_precision_policy_on_cpu(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    on = Precision("cpu")
    assert on.enabled and on.dtype is torch.bfloat16 and on.scaler is None and "bf16" in on.describe()
    assert not Precision("cpu", enabled=False).enabled
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    off = Precision("cpu")
    assert not off.enabled and off.describe() == "fp32 on cpu"
    assert not Precision("cpu", dtype="float16").enabled  # no float16 autocast for CPU training
    with pytest.raises(ValueError, match="dtype"):
        Precision("cpu", dtype="int8")


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x):
        y = self.conv(x)
        self.dtypes.append(y.dtype)
        return y


def _batches(n=3):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(4, 1, 8, 8, generator=g), "label": torch.randint(0, 3, (4, 1, 8, 8), generator=g)}
            for _ in range(n)]


def test_supervised_step_autocasts_the_forward_and_fires_monais_events(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    net = to_channels_last(_Tiny())
    from monai.losses import DiceCELoss

    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=_batches(), network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        iteration_update=SupervisedStep(Precision("cpu"), channels_last=True), decollate=False,
    )
    events = [IterationEvents.FORWARD_COMPLETED, IterationEvents.LOSS_COMPLETED, IterationEvents.BACKWARD_COMPLETED,
              IterationEvents.MODEL_COMPLETED]
    fired = {e: 0 for e in events}
    for event in events:
        trainer.add_event_handler(event, lambda _, e=event: fired.__setitem__(e, fired[e] + 1))
    before = net.conv.weight.detach().clone()
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"]))
    trainer.run()
    assert all(count == 3 for count in fired.values()), fired
    assert net.dtypes == [torch.bfloat16] * 3  # the forward ran under bf16 autocast
    assert losses[0].dtype == torch.float32 and net.conv.weight.dtype == torch.float32  # loss and weights in fp32
    assert not torch.equal(before, net.conv.weight)


def test_evaluation_step_autocasts_and_returns_float32(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    net = _Tiny()
    preds = []
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=_batches(2), network=net,
                                    iteration_update=EvaluationStep(Precision("cpu")))
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: preds.append(e.state.output[0]["pred"]))
    evaluator.run()
    assert net.dtypes == [torch.bfloat16] * 2 and preds[0].dtype == torch.float32


def test_count_flops_of_a_linear_forward_and_backward():
    layer = nn.Linear(16, 8, bias=False)
    x = torch.randn(4, 16, requires_grad=True)
    assert count_flops(lambda: layer(x)) == 2 * 4 * 16 * 8
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 4 * 16 * 8  # backward: input and weight grads


def test_cpu_peak_is_measured():
    peak = device_peak("cpu", min_seconds=0.05)
    assert peak.bf16_tflops > 0 and peak.fp32_tflops > 0 and "measured" in peak.source
