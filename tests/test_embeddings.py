"""Tests of the embedding diagnostics (volssl.metrics.embeddings), the EmbeddingProbe handler, the curve writer's
``record`` and tools/probe_embeddings.py."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from bundle_helpers import BUNDLES, REPO_ROOT, make_tiny_dataset
from volssl.engines import EmbeddingProbe, LearningCurveWriter
from volssl.metrics.embeddings import (
    channel_std,
    cosine_mean,
    embedding_diagnostics,
    load_probe_slices,
    nn_position_error,
    pooled_features,
    project_2d,
    ridge_position_r2,
    split_volumes,
)
from volssl.networks import PretrainNet2d, SalPretrainNet2d, UNetEncoder2d

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def _grid(n_volumes: int = 6, n_slices: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Positions (i + 1) / S of every slice of ``n_volumes`` volumes, and the volume id of each row."""
    p = np.tile((np.arange(n_slices) + 1) / n_slices, n_volumes)
    v = np.repeat(np.arange(n_volumes), n_slices)
    return p, v


# ---------------------------------------------------------------- the four numbers, on embeddings with known answers


def test_constant_embedding_is_collapse():
    p, v = _grid()
    x = np.tile(np.array([[0.3, -1.0, 2.0, 0.5]]), (p.size, 1))
    assert channel_std(x) == pytest.approx(0.0, abs=1e-12)
    assert cosine_mean(x) == pytest.approx(1.0, abs=1e-12)
    # scaling the rows changes nothing: the rows are L2-normalised first
    scaled = x * np.linspace(0.5, 3.0, p.size)[:, None]
    assert channel_std(scaled) == pytest.approx(0.0, abs=1e-12)
    assert cosine_mean(scaled) == pytest.approx(1.0, abs=1e-12)


def test_embedding_equal_to_position():
    p, v = _grid()
    rng = np.random.default_rng(0)
    x = np.stack([p, 1e-3 * rng.standard_normal(p.size), 1e-3 * rng.standard_normal(p.size)], axis=1)
    assert ridge_position_r2(x, p, v) > 0.999
    # a smooth code of position: the nearest slice of another volume is the slice at the same position
    code = np.stack([np.cos(np.pi * p), np.sin(np.pi * p)], axis=1)
    assert nn_position_error(code, p, v) == pytest.approx(0.0, abs=1e-12)
    diag = embedding_diagnostics(code, p, v)
    assert list(diag) == ["position_r2", "nn_position_error", "cosine_mean", "channel_std"]
    # p is nearly linear in (cos pi p, sin pi p): R^2 0.986 for a linear fit
    assert diag["position_r2"] > 0.98 and diag["nn_position_error"] == 0.0


def test_random_embedding_values():
    p, v = _grid(n_volumes=20, n_slices=100)
    x = np.random.default_rng(1).standard_normal((p.size, 64))
    # isotropic: each coordinate of a unit vector in 64 dimensions has std 1/8
    assert channel_std(x) == pytest.approx(1 / 8, rel=0.03)
    assert abs(cosine_mean(x)) < 0.005
    assert ridge_position_r2(x, p, v) < 0.05  # nothing to predict
    assert 0.2 < nn_position_error(x, p, v) < 0.4  # chance: the median gap of two uniform positions, about 0.29


def test_cosine_mean_equals_the_mean_over_pairs():
    x = np.random.default_rng(2).standard_normal((30, 5)) + 0.5
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = u @ u.T
    brute = (sim.sum() - np.trace(sim)) / (30 * 29)
    assert cosine_mean(x) == pytest.approx(brute, abs=1e-12)
    assert channel_std(x) == pytest.approx(u.std(axis=0).mean(), abs=1e-12)


def test_nn_search_excludes_the_own_volume():
    # volume 0 holds exact copies of its neighbours: without the exclusion every error would be 0.05
    p = np.array([0.1, 0.15, 0.9, 0.95])
    v = np.array([0, 0, 1, 1])
    x = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.1], [1.0, 0.1]])
    assert nn_position_error(x, p, v) == pytest.approx(0.8)


def test_split_and_r2_on_held_out_volumes():
    fit, score = split_volumes(np.array([7, 7, 3, 3, 5, 9, 9]))
    np.testing.assert_array_equal(fit, [True, True, False, False, True, False, False])
    assert (fit ^ score).all()
    with pytest.raises(ValueError, match="two volumes"):
        split_volumes([1, 1, 1])
    # a feature that encodes position in the fitting volumes only: scored on the others, R^2 is poor
    p, v = _grid(n_volumes=4)
    fit, _ = split_volumes(v)
    x = np.where(fit, p, 0.5)[:, None] + 1e-6 * np.arange(p.size)[:, None]
    assert ridge_position_r2(x, p, v) < 0.1
    with pytest.raises(ValueError, match="positions"):
        ridge_position_r2(np.zeros((5, 2)), np.zeros(4), np.zeros(5))


def test_project_2d():
    p, v = _grid(n_volumes=3)
    x = np.stack([np.cos(np.pi * p), np.sin(np.pi * p), np.zeros_like(p)], axis=1)
    pts = project_2d(x)
    assert pts.shape == (p.size, 2)
    # unit rows on a half circle: the first component orders the slices by position
    corr = np.corrcoef(pts[:20, 0], p[:20])[0, 1]
    assert abs(corr) > 0.95
    assert project_2d(x[:, :1] + 1).shape == (p.size, 2)


def test_pooled_features_eval_mode_and_restore():
    torch.manual_seed(0)
    enc = UNetEncoder2d(1, 4)
    enc.train()
    x = torch.randn(5, 1, 32, 32)
    a = pooled_features(enc, x, batch_size=2)
    assert a.shape == (5, 64) and enc.training
    # eval mode: one slice's features do not depend on the others of its batch
    b = pooled_features(enc, x[:1], batch_size=1)
    torch.testing.assert_close(a[:1], b)
    assert pooled_features(enc, x, level=2).shape == (5, 16)


# ---------------------------------------------------------------- the handler and the curve writer


def _volumes(n: int = 3, slices: int = 6) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"image": rng.standard_normal((1, 32, 32, slices)).astype(np.float32)} for _ in range(n)]


def test_load_probe_slices():
    probe = load_probe_slices(_volumes(3, 6), None, [16, 16], slice_axis=-1, max_volumes=2)
    assert probe["images"].shape == (12, 1, 16, 16) and type(probe["images"]) is torch.Tensor
    np.testing.assert_allclose(probe["positions"][:6], np.arange(1, 7) / 6)
    np.testing.assert_array_equal(probe["volumes"], np.repeat([0, 1], 6))


def test_curve_writer_record_before_and_after_the_epoch_row(tmp_path):
    engine = Engine(lambda e, b: {"loss": 1.0})
    writer = LearningCurveWriter(tmp_path, name="curve")
    writer.attach(engine)
    writer.record(0, {"probe_x": 0.5})  # before training: a row of its own
    writer.record(1, {"probe_x": 1.5})  # before epoch 1's row exists: joins it at the epoch end
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: writer.record(e.state.epoch, {"probe_y": 2.0}))
    engine.run([0, 1], max_epochs=2)
    with open(tmp_path / "curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["epoch"]) for r in rows] == [0.0, 1.0, 2.0]
    assert rows[0]["probe_x"] == "0.5" and rows[0]["train_loss"] == ""
    assert rows[1]["probe_x"] == "1.5" and rows[1]["probe_y"] == "2.0" and float(rows[1]["train_loss"]) == 1.0
    assert rows[2]["probe_x"] == "" and rows[2]["probe_y"] == "2.0"
    assert (tmp_path / "curve.png").is_file()


def test_embedding_probe_handler(tmp_path):
    torch.manual_seed(0)
    net = SalPretrainNet2d(1, features=4, embed_dim=8)
    curve = LearningCurveWriter(tmp_path, name="pretrain_curve")
    probe = EmbeddingProbe(net, _volumes(4, 6), None, [32, 32], interval=2, log_dir=tmp_path / "tb",
                           curve_writer=curve)

    def step(engine, batch):
        with torch.no_grad():  # a visible change of the encoder at every iteration
            net.encoder.levels[0].conv1.conv.weight.mul_(1.1)
        return {"loss": 0.0}

    engine = Engine(step)
    curve.attach(engine)
    probe.attach(engine)
    engine.run([0], max_epochs=3)
    with open(tmp_path / "pretrain_curve.csv", newline="") as f:
        rows = {float(r["epoch"]): r for r in csv.DictReader(f)}
    # before training, every 2 epochs, and after the last epoch
    probed = [e for e, r in rows.items() if r.get("probe_channel_std")]
    assert probed == [0.0, 2.0, 3.0]
    for e in probed:
        values = {k: float(rows[e][f"probe_{k}"]) for k in ("position_r2", "nn_position_error", "cosine_mean",
                                                             "channel_std")}
        assert all(math.isfinite(x) for x in values.values()) and 0 < values["channel_std"] < 1
    assert rows[0.0]["probe_cosine_mean"] != rows[3.0]["probe_cosine_mean"]
    assert set(engine.state.metrics) >= {"probe_position_r2", "probe_channel_std"}
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert net.training  # back in training mode
    # the features are those of the encoder in eval mode, as the tool computes them
    features = pooled_features(net.encoder, probe.probe_set()["images"])
    diag = embedding_diagnostics(features, probe.probe_set()["positions"], probe.probe_set()["volumes"])
    assert diag["channel_std"] == pytest.approx(float(rows[3.0]["probe_channel_std"]), rel=1e-9)
    # one volume cannot be split into a fitting and a scored half: a warning, and the probe stays off
    lone = EmbeddingProbe(net, _volumes(1), None, [32, 32])
    assert lone.interval == 0
    idle = Engine(step)
    lone.attach(idle)
    EmbeddingProbe(net, [], None, [32, 32], interval=0).attach(idle)  # disabled: no data needed
    idle.run([0], max_epochs=1)
    assert not idle.state.metrics
    with pytest.raises(ValueError, match="interval"):
        EmbeddingProbe(net, _volumes(2), None, [32, 32], interval=-1)


# ---------------------------------------------------------------- the tool


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("probe_data"))


def _tool(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "probe_embeddings.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


def test_probe_tool_random_and_pretrained(tiny_data, tmp_path):
    # a "run" whose pretrain.pt holds an encoder of features 4 (+ a projection head the tool ignores)
    torch.manual_seed(3)
    run_dir = tmp_path / "run"
    (run_dir / "models").mkdir(parents=True)
    net = PretrainNet2d(1, features=4, proj_dim=8)
    torch.save({"network": net.state_dict(), "loss": {}}, run_dir / "models" / "pretrain.pt")
    common = ["--bundle", str(BUNDLES / "coral_mri_segmentation"), "--datalist", str(tiny_data), "--role", "test",
              "--overrides", "{'features': 4}", "--patch_size", "[32,32]"]
    proc = _tool([*common, "--output_dir", str(tmp_path / "pre"), "--run_dir", str(run_dir)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON line, nothing else on stdout
    result = json.loads(lines[0])
    assert result["n_volumes"] == 2 and result["n_slices"] == 48 and result["feature_dim"] == 64
    assert result["checkpoint"].endswith("pretrain.pt")
    # the same numbers as the package computes for this encoder
    from volssl.data import load_images
    from volssl.data.slices import volume_transform

    probe = load_probe_slices(load_images(tiny_data, ["test"]), volume_transform(slice_axis=2), [32, 32], 2)
    expected = embedding_diagnostics(pooled_features(net.encoder, probe["images"]), probe["positions"],
                                     probe["volumes"])
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert (tmp_path / "pre" / "embeddings.png").stat().st_size > 1000
    assert json.loads((tmp_path / "pre" / "embeddings.json").read_text()) == result
    # no --run_dir: random init of the same encoder; a checkpoint of another width is a clear error
    proc = _tool([*common[:-4], "--overrides", "{'features': 8}", "--output_dir", str(tmp_path / "bad"),
                  "--run_dir", str(run_dir)])
    assert proc.returncode == 1 and "features" in proc.stderr and proc.stdout == ""
