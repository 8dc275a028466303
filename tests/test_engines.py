"""Engine pieces: resume from the newest readable checkpoint, best-model saving that survives a resume, and the two-view
pretraining step (one forward per view)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from volssl.engines import BestModelSaver, ResumeFromLatest


def test_resume_skips_a_checkpoint_cut_short(tmp_path):
    """An interval checkpoint truncated by a kill during its write is set aside and the previous one is used."""
    net = torch.nn.Linear(2, 2)
    torch.save({"network": net.state_dict()}, tmp_path / "checkpoint_epoch=1.pt")
    good = torch.load(tmp_path / "checkpoint_epoch=1.pt", weights_only=True)
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes((tmp_path / "checkpoint_epoch=1.pt").read_bytes()[:100])
    other = torch.nn.Linear(2, 2)
    handler = ResumeFromLatest(tmp_path, {"network": other})
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    assert (tmp_path / "checkpoint_epoch=2.pt.unreadable").is_file()
    assert torch.equal(other.weight, good["network"]["weight"])


def test_best_model_saver_keeps_the_best_across_a_resume(tmp_path):
    net = torch.nn.Linear(2, 2)
    saver = BestModelSaver(tmp_path / "model.pt", net, "dice")
    evaluator = Engine(lambda e, b: None)
    saver.attach(evaluator)
    # drive the saver directly with states, as SupervisedEvaluator would after computing metrics
    for epoch, score in enumerate([0.5, 0.7, 0.6], start=1):
        evaluator.state.epoch, evaluator.state.metrics = epoch, {"dice": score}
        with torch.no_grad():
            net.weight.fill_(score)
        saver(evaluator)
    assert saver.best_metric == 0.7 and saver.best_epoch == 2
    assert torch.allclose(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], torch.tensor(0.7))
    resumed = BestModelSaver(tmp_path / "model.pt", net, "dice")
    resumed.load_state_dict(saver.state_dict())
    evaluator.state.epoch, evaluator.state.metrics = 4, {"dice": 0.65}
    with torch.no_grad():
        net.weight.fill_(0.65)
    resumed(evaluator)  # worse than the best before the interruption: model.pt must stay
    assert torch.allclose(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], torch.tensor(0.7))


def _trainer_state(epochs_done: int, planned: int, epoch_length: int = 3) -> dict:
    engine = Engine(lambda e, b: None)
    engine.run([0] * epoch_length, max_epochs=epochs_done)
    state = engine.state_dict()
    state["max_epochs"] = planned  # a run planned for `planned` epochs, stopped after `epochs_done`
    return state


def _resume(tmp_path, requested: int) -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.max_epochs = requested
    ResumeFromLatest(tmp_path, {"network": torch.nn.Linear(2, 2), "trainer": engine}).attach(engine)
    engine.run([0] * 3, max_epochs=requested)
    return engine


def test_only_an_interrupted_run_is_resumed(tmp_path):
    """A new request after a finished run (e.g. a second MONAI Label /train) trains again instead of ending at once
    or failing on a smaller max_epochs; an interrupted run is resumed; one earlier run is kept aside."""
    net = torch.nn.Linear(2, 2)
    torch.save({"network": net.state_dict(), "trainer": _trainer_state(2, 2)}, tmp_path / "checkpoint_epoch=2.pt")
    engine = _resume(tmp_path, requested=1)
    assert engine.state.epoch == 1 and engine.state.iteration == 3  # trained, as a new run
    assert not (tmp_path / "checkpoint_epoch=2.pt").exists()
    assert len(list(tmp_path.glob("previous_*/checkpoint_epoch=2.pt"))) == 1

    torch.save({"network": net.state_dict(), "trainer": _trainer_state(2, 2)}, tmp_path / "checkpoint_epoch=2.pt")
    engine = _resume(tmp_path, requested=4)  # more epochs than the finished run had: still a new run
    assert engine.state.epoch == 4 and engine.state.iteration == 12
    assert not (tmp_path / "checkpoint_epoch=2.pt").exists()

    torch.save({"network": net.state_dict(), "trainer": _trainer_state(2, 4)}, tmp_path / "checkpoint_epoch=2.pt")
    engine = _resume(tmp_path, requested=4)  # interrupted at epoch 2 of 4: resumed, 2 more epochs
    assert engine.state.epoch == 4 and engine.state.iteration == 12
    assert (tmp_path / "checkpoint_epoch=2.pt").exists()  # resumed from, not set aside
    assert len(list(tmp_path.glob("previous_*"))) == 1  # only the last set-aside run is kept

    torch.save({"network": net.state_dict(), "trainer": _trainer_state(2, 4)}, tmp_path / "checkpoint_epoch=2.pt")
    engine = _resume(tmp_path, requested=2)  # interrupted, but the request wants no more epochs than it has
    assert engine.state.epoch == 2 and engine.state.iteration == 6


def test_resume_from_a_checkpoint_older_than_the_config(tmp_path, caplog):
    """A checkpoint written before the config gained a resumable object (CRLN's second best-model saver): the run
    resumes what the checkpoint holds, the new object starts fresh, and the log says so."""
    saved_net = torch.nn.Linear(2, 2)
    torch.save({"network": saved_net.state_dict(), "trainer": _trainer_state(1, 3)}, tmp_path / "checkpoint_epoch=1.pt")
    net = torch.nn.Linear(2, 2)
    saver = BestModelSaver(tmp_path / "model_student.pt", net, "dice")
    engine = Engine(lambda e, b: None)
    engine.state.max_epochs = 3
    ResumeFromLatest(tmp_path, {"network": net, "trainer": engine, "other_best_model": saver}).attach(engine)
    with caplog.at_level("WARNING", logger="volssl.resume"):
        engine.run([0] * 3, max_epochs=3)
    assert engine.state.epoch == 3 and engine.state.iteration == 9  # resumed after epoch 1, not restarted
    assert torch.equal(net.weight, saved_net.weight)
    assert saver.best_epoch == -1
    assert "holds no state for ['other_best_model']" in caplog.text


def test_with_weights_loads_a_whole_network_and_names_a_mismatch(tmp_path):
    from volssl.io import VolsslInputError
    from volssl.networks import UNet2d, with_weights

    source = UNet2d(1, 3, features=4)
    torch.save(source.state_dict(), tmp_path / "model.pt")
    target = with_weights(UNet2d(1, 3, features=4), tmp_path / "model.pt")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    assert with_weights(target, None) is target
    import pytest

    with pytest.raises(VolsslInputError, match="model.pt: does not fit UNet2d"):
        with_weights(UNet2d(1, 3, features=8), tmp_path / "model.pt")
    with pytest.raises(VolsslInputError, match="init_weights checkpoint not found"):
        with_weights(target, tmp_path / "missing.pt")


def _two_view_trainer(separate: bool):
    """A SupervisedTrainer running TwoViewContrastiveStep on a tiny BatchNorm network and the CORAL loss."""
    from monai.engines import SupervisedTrainer
    from volssl.engines import TwoViewContrastiveStep
    from volssl.losses import CoralLoss

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(4, 1, 8, 8, generator=g), "image_2": 3.0 + 2.0 * torch.randn(4, 1, 8, 8, generator=g),
             "position": torch.tensor([0.25, 0.5, 0.75, 1.0])}
    loss = CoralLoss(feature_dim=4, seed=0)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=[batch], network=net,
        optimizer=torch.optim.SGD(list(net.parameters()) + list(loss.parameters()), lr=0.0), loss_function=loss,
        iteration_update=TwoViewContrastiveStep(separate_forwards=separate), decollate=False,
    )
    return trainer, net, batch, loss


def test_two_view_step_separate_forwards_keep_batchnorm_statistics_per_view():
    """As the public CORAL/PCL code: each view has its own forward, so BatchNorm normalises it with its own batch
    statistics (the projections equal those of each view alone) and the running statistics are updated per view;
    ``separate_forwards=False`` (one forward of both views) gives different projections, hence a different loss."""
    losses = {}
    for separate in (True, False):
        trainer, net, batch, loss = _two_view_trainer(separate)
        calls: list[int] = []
        net.register_forward_hook(lambda m, args, out, calls=calls: calls.append(args[0].shape[0]))
        trainer.run()
        bn = net[1]
        assert calls == ([4, 4] if separate else [8])
        assert int(bn.num_batches_tracked) == (2 if separate else 1)
        losses[separate] = float(trainer.state.output["loss"])
        if separate:
            net.train()
            with torch.no_grad():  # lr 0: the weights did not move, so the views' projections can be recomputed
                z = torch.cat([net(batch["image"]), net(batch["image_2"])])
                expected = loss(z, torch.cat([batch["position"], batch["position"]]))
            assert losses[True] == pytest.approx(expected.item(), rel=1e-6)
    assert abs(losses[True] - losses[False]) > 1e-4


def test_epoch_snapshots_are_kept_at_the_chosen_epochs(tmp_path):
    from volssl.engines import EpochSnapshotSaver

    net = torch.nn.Linear(2, 1)
    seen = {}

    def step(engine, batch):
        with torch.no_grad():
            net.weight.add_(1.0)  # the weights change every iteration
        return {}

    engine = Engine(step)
    saver = EpochSnapshotSaver(tmp_path, {"network": net}, epochs=[3, 1])
    saver.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.setdefault(e.state.epoch, net.weight.clone()))
    engine.run([0], max_epochs=4)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["pretrain_epoch1.pt", "pretrain_epoch3.pt"]
    for epoch in (1, 3):
        state = torch.load(tmp_path / f"pretrain_epoch{epoch}.pt", weights_only=True)
        assert set(state) == {"network"} and torch.equal(state["network"]["weight"], seen[epoch])
    # an epoch the run never reaches is an error at the start, not a missing file at the end
    late = Engine(step)
    EpochSnapshotSaver(tmp_path / "late", {"network": net}, epochs=[5]).attach(late)
    with pytest.raises(ValueError, match="beyond the run's 4 epochs"):
        late.run([0], max_epochs=4)
    with pytest.raises(ValueError, match=">= 1"):
        EpochSnapshotSaver(tmp_path, {"network": net}, epochs=[0])
