"""Training options of the bundles used by the label-efficiency protocol: early stopping on a validation plateau
(and its resume), frozen-encoder fine-tuning, a fixed number of iterations per epoch, metadata-free slice items."""

from __future__ import annotations

import pytest
import torch
from bundle_helpers import BUNDLES, make_tiny_dataset
from ignite.engine import Engine, Events
from volssl.engines import EarlyStopOnPlateau
from volssl.networks import UNet2d, freeze_encoder

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|trace|trace_method|interface)` is deprecated")


def _engines(scores: list[float], val_interval: int = 1):
    """A trainer of one-iteration epochs whose 'validation' reports ``scores`` in turn every ``val_interval`` epochs."""
    trainer = Engine(lambda e, b: None)
    evaluator = Engine(lambda e, b: None)
    queue = list(scores)

    @trainer.on(Events.EPOCH_COMPLETED(every=val_interval))
    def validate(engine):
        evaluator.state.epoch = engine.state.epoch  # as MONAI's ValidationHandler: evaluator.run(trainer epoch)
        evaluator.state.metrics = {"val_mean_dice": queue.pop(0) if queue else 0.0}

    return trainer, evaluator


def test_early_stop_after_patience_validations_without_improvement():
    trainer, evaluator = _engines([0.1, 0.3, 0.3, 0.2, 0.5])
    stop = EarlyStopOnPlateau(evaluator, "val_mean_dice", patience=2)
    stop.attach(trainer)
    trainer.run([0], max_epochs=10)
    # best 0.3 at epoch 2; epochs 3 (0.3, not better) and 4 (0.2) fill the patience
    assert trainer.state.epoch == 4 and stop.stopped_epoch == 4 and stop.best_metric == pytest.approx(0.3)


def test_early_stop_counts_validations_not_epochs_and_off_when_patience_is_none():
    trainer, evaluator = _engines([0.5, 0.4, 0.3], val_interval=3)
    stop = EarlyStopOnPlateau(evaluator, "val_mean_dice", patience=2)
    stop.attach(trainer)
    trainer.run([0], max_epochs=20)
    assert trainer.state.epoch == 9  # validations at epochs 3, 6, 9
    trainer, evaluator = _engines([0.5, 0.4, 0.3, 0.2])
    EarlyStopOnPlateau(evaluator, "val_mean_dice", patience=None).attach(trainer)
    trainer.run([0], max_epochs=6)
    assert trainer.state.epoch == 6
    with pytest.raises(ValueError, match="patience"):
        EarlyStopOnPlateau(evaluator, "val_mean_dice", patience=0)


def test_early_stop_cannot_stop_before_the_minimum_number_of_epochs():
    # a run that has not learnt yet (validation Dice flat at 0): without a minimum, patience 2 stops it at epoch 3
    trainer, evaluator = _engines([0.0] * 20)
    stop = EarlyStopOnPlateau(evaluator, "val_mean_dice", patience=2)
    stop.attach(trainer)
    trainer.run([0], max_epochs=20)
    assert stop.stopped_epoch == 3
    # with min_epochs=10 the patience only counts from epoch 11 on: the earliest stop is epoch 12
    trainer, evaluator = _engines([0.0] * 20)
    stop = EarlyStopOnPlateau(evaluator, "val_mean_dice", patience=2, min_epochs=10)
    stop.attach(trainer)
    trainer.run([0], max_epochs=20)
    assert stop.stopped_epoch == 12 and trainer.state.epoch == 12
    # improvements inside the minimum still set the best value, which later validations must beat
    trainer, evaluator = _engines([0.1, 0.6, 0.2, 0.2, 0.2, 0.5, 0.7, 0.3, 0.3, 0.3])
    stop = EarlyStopOnPlateau(evaluator, "val_mean_dice", patience=3, min_epochs=4)
    stop.attach(trainer)
    trainer.run([0], max_epochs=10)
    assert stop.best_metric == pytest.approx(0.7) and stop.stopped_epoch == 10
    # a shorter run than the minimum runs to its end; a negative minimum is refused
    trainer, evaluator = _engines([0.0] * 5)
    stop = EarlyStopOnPlateau(evaluator, "val_mean_dice", patience=1, min_epochs=10)
    stop.attach(trainer)
    trainer.run([0], max_epochs=5)
    assert trainer.state.epoch == 5 and not stop.stopped
    with pytest.raises(ValueError, match="min_epochs"):
        EarlyStopOnPlateau(evaluator, "val_mean_dice", patience=2, min_epochs=-1)


def test_bundle_train_configs_wire_the_minimum_epochs_into_early_stopping():
    from monai.bundle import ConfigParser

    for name in ("coral", "sal", "crln"):
        parser = ConfigParser()
        parser.read_config(str(BUNDLES / f"{name}_mri_segmentation" / "configs" / "train.json"))
        assert parser["early_stop_min_epochs"] == 10, name
        assert parser.config["train"]["early_stop"]["min_epochs"] == "@early_stop_min_epochs", name


def test_a_stopped_run_ends_at_once_when_resumed():
    trainer, evaluator = _engines([0.5, 0.4, 0.3])
    stop = EarlyStopOnPlateau(evaluator, "val_mean_dice", patience=2)
    stop.attach(trainer)
    trainer.run([0], max_epochs=10)
    state = stop.state_dict()
    assert state["stopped_epoch"] == 3

    resumed, evaluator2 = _engines([0.9])
    again = EarlyStopOnPlateau(evaluator2, "val_mean_dice", patience=2)
    again.attach(resumed)
    resumed.add_event_handler(Events.STARTED, lambda e: again.load_state_dict(state))  # what CheckpointLoader does
    epochs = []
    resumed.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs.append(e.state.epoch))
    resumed.run([0], max_epochs=10)
    assert epochs == [] and again.stopped_epoch == 3


def test_freeze_encoder_trains_the_decoder_only_and_keeps_encoder_statistics():
    torch.manual_seed(0)
    net = freeze_encoder(UNet2d(1, 3, features=4), True)
    assert not any(p.requires_grad for p in net.encoder.parameters())
    assert all(p.requires_grad for n, p in net.named_parameters() if not n.startswith("encoder."))
    net.train()
    assert not net.encoder.training and net.decoder.training
    stats = {k: v.clone() for k, v in net.encoder.state_dict().items() if "running" in k}
    enc = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(2, 1, 32, 32)).square().mean().backward()
        opt.step()
    assert all(torch.equal(v, net.encoder.state_dict()[k]) for k, v in enc.items())  # weights and BN statistics
    assert stats and set(net.state_dict()) == set(UNet2d(1, 3, features=4).state_dict())  # same model.pt keys
    plain = freeze_encoder(UNet2d(1, 3, features=4), False)
    assert all(p.requires_grad for p in plain.parameters())
    with pytest.raises(TypeError, match="no submodule"):
        freeze_encoder(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("bundle", ["coral_mri_segmentation", "sal_mri_segmentation"])
def test_train_config_options(tmp_path, bundle):
    from monai.bundle import ConfigParser

    datalist = make_tiny_dataset(tmp_path / "data", n=6, n_labeled=2, n_val=1, n_test=1)
    configs = BUNDLES / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "cpu_small.json")])
    parser.update({"bundle_root": str(tmp_path / "b"), "dataset_dir": str(datalist.parent), "features": 4,
                   "load_pretrain": False, "freeze_encoder": True, "iterations_per_epoch": 7,
                   "early_stop_patience": 3})
    net = parser.get_parsed_content("network")
    optimizer = parser.get_parsed_content("optimizer")
    trainable = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trainable == {id(p) for n, p in net.named_parameters() if not n.startswith("encoder.")}
    loader = parser.get_parsed_content("train#dataloader")
    assert len(loader) == 7  # a fixed number of iterations per epoch instead of one pass over the slices
    batch = next(iter(loader))
    assert type(batch["image"]) is torch.Tensor  # plain tensors: no metadata tracked in the training augmentation
    state = parser.get_parsed_content("train#resume_state")
    assert isinstance(state["early_stop"], EarlyStopOnPlateau) and state["early_stop"].patience == 3
    # the object saved with the checkpoints is the one the trainer runs, after the validation (not a copy)
    trainer = parser.get_parsed_content("train#trainer")
    handlers = [h for h, *_ in trainer._event_handlers[Events.EPOCH_COMPLETED]]
    assert state["early_stop"] in handlers
    validation = [i for i, h in enumerate(handlers) if type(getattr(h, "__self__", h)).__name__ == "ValidationHandler"]
    assert validation and max(validation) < handlers.index(state["early_stop"])
    default = ConfigParser()
    default.read_config([str(configs / "train.json")])
    assert default["freeze_encoder"] is False and default["early_stop_patience"] is None
    assert default["iterations_per_epoch"] is None


def test_crln_config_has_early_stopping():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "crln_mri_segmentation" / "configs" / "train.json"))
    assert parser["early_stop_patience"] is None
    assert parser["train#resume_state#early_stop"] == "@train#early_stop"
    assert parser["train#early_stop#_target_"] == "volssl.engines.EarlyStopOnPlateau"
    assert parser["train#trainer#train_handlers"] == "$@train#handlers + [@train#early_stop]"
    assert all(isinstance(h, dict) for h in parser["train#handlers"])  # MONAI reads each handler as a dict


def test_learning_curve_png_is_throttled_and_drawn_at_the_end(tmp_path, monkeypatch):
    import volssl.viz
    from volssl.engines import LearningCurveWriter

    drawn = []
    monkeypatch.setattr(volssl.viz, "plot_learning_curves", lambda rows, path: drawn.append(len(rows)))
    trainer = Engine(lambda e, b: {"loss": torch.tensor(1.0 / e.state.epoch)})
    LearningCurveWriter(tmp_path, name="curve", png_interval_s=1e9).attach(trainer)
    csv_rows = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: csv_rows.append(
        len((tmp_path / "curve.csv").read_text().splitlines()) - 1))
    trainer.run([0, 1], max_epochs=3)
    # the CSV after every epoch; the PNG after the first epoch (none drawn yet), then only at the end
    assert csv_rows == [1, 2, 3] and drawn == [1, 3]
    drawn.clear()
    every = Engine(lambda e, b: {"loss": torch.tensor(1.0)})
    LearningCurveWriter(tmp_path / "b", name="curve", png_interval_s=0).attach(every)
    every.run([0], max_epochs=3)
    assert drawn == [1, 2, 3, 3]
