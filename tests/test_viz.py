"""The learning-curve figure read as a person reads it, checked on matplotlib's objects (not pixels): labelled axes
with units, integer epoch ticks, one legend entry per visible line, losses apart from schedule scalars, the best
epoch marked, the probe's better directions named."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from volssl.viz import learning_curves_figure, plot_learning_curves  # noqa: E402

# a CRLN curve as its train.json writes it: val_mean_dice is the teacher's Dice (the key metric)
CRLN_ROWS = [
    {"epoch": float(e), "train_loss": 5.0 - e * 0.3, "train_sup": 2.0 - e * 0.1, "train_unsup": 0.01 * e,
     "train_cps": 5.5 - e * 0.2, "train_a": -0.05 * e, "train_unsup_weight": 0.5, "val_mean_dice": d,
     "val_mean_dice_teacher": d, "val_mean_dice_student": d + 0.02}
    for e, d in zip(range(1, 8), (0.02, 0.10, 0.35, 0.52, 0.49, 0.55, 0.51))
]
PROBE_ROWS = [{"epoch": 0.0, "probe_position_r2": -0.2, "probe_nn_position_error": 0.17, "probe_cosine_mean": 0.99,
               "probe_channel_std": 0.005}] + [
    {"epoch": float(e), "train_loss": 4.0 - e * 0.1, "train_gp": 3.9 - e * 0.1, "probe_position_r2": 0.1 * e,
     "probe_nn_position_error": 0.2 - 0.02 * e, "probe_cosine_mean": 0.95, "probe_channel_std": 0.01}
    for e in range(1, 5)]


@pytest.fixture
def crln_axes():
    fig = learning_curves_figure(CRLN_ROWS)
    yield {ax.get_title(): ax for ax in fig.axes}
    plt.close(fig)


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_every_axis_is_labelled_with_units_and_integer_epochs(crln_axes):
    for ax in crln_axes.values():
        assert ax.get_xlabel() == "epoch"
        assert "(" in ax.get_ylabel()  # the unit / scale in brackets
        ax.figure.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    assert "higher is better" in crln_axes["validation"].get_ylabel()


def test_losses_and_schedule_scalars_are_on_separate_panels(crln_axes):
    assert sorted(_legend(crln_axes["training losses (mean per epoch)"])) == ["cps", "loss", "sup", "unsup"]
    assert sorted(_legend(crln_axes["training schedule scalars"])) == ["a", "unsup_weight"]


def test_one_legend_entry_per_visible_line_and_the_best_epoch_marked(crln_axes):
    ax = crln_axes["validation"]
    labels = _legend(ax)
    assert len(labels) == len(ax.get_lines())  # teacher and key metric identical: one line, one entry naming both
    assert "mean_dice = mean_dice_teacher" in labels and "mean_dice_student" in labels
    best = [line for line in ax.get_lines() if line.get_label().startswith("best epoch")]
    assert len(best) == 1 and list(best[0].get_xdata()) == [6.0, 6.0]  # argmax of val_mean_dice
    assert "best epoch 6 (mean_dice 0.550)" in labels


def test_probe_panel_names_the_better_direction():
    fig = learning_curves_figure(PROBE_ROWS)
    try:
        axes = {ax.get_title(): ax for ax in fig.axes}
        assert set(axes) == {"training losses (mean per epoch)", "embedding probe"}
        labels = _legend(axes["embedding probe"])
        assert len(labels) == 4 and all("better" in label for label in labels)
        assert any(label.startswith("cosine_mean (lower is better") for label in labels)
        assert any(label.startswith("position_r2 (higher is better") for label in labels)
    finally:
        plt.close(fig)


def test_plot_learning_curves_writes_the_png(tmp_path):
    path = plot_learning_curves(CRLN_ROWS, tmp_path / "curve.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
