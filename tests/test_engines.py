"""Engine handlers: resume from the newest readable checkpoint, best-model saving that survives a resume."""

from __future__ import annotations

import torch
from ignite.engine import Engine

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
