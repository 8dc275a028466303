"""Paired comparison statistics of the label-efficiency protocol: differences against a baseline with bootstrap 95 %
confidence intervals.

Every arm is trained on the same labelled sets with the same seeds as the baseline, so each (labelled set, seed) pair
gives one paired difference ``d = Dice(arm) - Dice(baseline)`` on the same test volumes. The resampling unit of the
bootstrap:

- ``"pairs"`` (default): the (labelled set, seed) pairs are resampled with replacement. They are the experiment's
  independent replicates: which volumes happen to be labelled and the training seed are what varies from one run
  of the protocol to the next (the issue measured a seed spread of 0.1-0.6 Dice), and within one pair the test
  volumes are shared by both arms. The interval says how far the mean difference could move with other labelled
  sets and seeds, for this test set.
- ``"pairs_and_cases"``: a two-way bootstrap that also resamples the test volumes (the same resampled volumes for
  every pair, since all runs are scored on the same test set): per replicate, the mean over resampled pairs of the
  mean over resampled cases of the per-case differences. Wider; it also covers the finite test set.

The intervals are percentile intervals of ``n_boot`` replicates (default 10000, seeded, so a table is reproducible).
With few pairs (n < ~10) a percentile interval is too narrow (it ignores the n - 1 in the standard error and the
resampled means take few distinct values), so the table also gives the paired t interval as a check; where the two
disagree, trust the wider one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["bootstrap_mean_ci", "paired_summary", "t_interval", "two_way_bootstrap_ci"]


def bootstrap_mean_ci(values: Sequence[float], n_boot: int = 10000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement).

    Returns:
        ``(low, high)``; ``(v, v)`` for a single value; ``(nan, nan)`` for none.
    """
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def two_way_bootstrap_ci(diffs: np.ndarray, n_boot: int = 10000, level: float = 0.95,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the grand mean of ``diffs`` (pairs x cases), resampling pairs and cases independently.

    Each replicate draws pair rows and case columns with replacement (the same columns for every row: the runs share
    the test cases) and takes the mean of the selected block.
    """
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"diffs must be a non-empty (pairs, cases) array, got shape {d.shape}")
    n_p, n_c = d.shape
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        rows = rng.integers(0, n_p, size=n_p)
        cols = rng.integers(0, n_c, size=n_c)
        # mean over the block d[rows][:, cols] without building it: weights per row and per column
        w_r = np.bincount(rows, minlength=n_p)
        w_c = np.bincount(cols, minlength=n_c)
        reps[b] = w_r @ d @ w_c / (n_p * n_c)
    alpha = (1.0 - level) / 2
    return float(np.quantile(reps, alpha)), float(np.quantile(reps, 1 - alpha))


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The t interval ``mean +- t_{n-1} * sd / sqrt(n)``; ``(nan, nan)`` for fewer than two values."""
    from scipy import stats

    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if x.size < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def paired_summary(arm: Sequence[float], baseline: Sequence[float], case_diffs: np.ndarray | None = None,
                   unit: str = "pairs", n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> dict:
    """The paired comparison of one arm with the baseline over the same (labelled set, seed) pairs.

    Args:
        arm, baseline: the metric of each pair, in the same pair order.
        case_diffs: (pairs, cases) per-case differences, for ``unit="pairs_and_cases"``.
        unit: ``"pairs"`` or ``"pairs_and_cases"`` (see the module docstring).

    Returns:
        ``n_pairs``, ``arm_mean``, ``baseline_mean``, ``diff_mean``, ``diff_sd`` (sample sd of the paired
        differences), ``ci_low``/``ci_high`` (bootstrap), ``t_low``/``t_high`` and ``n_better`` (pairs where the
        arm scored higher).
    """
    a, b = np.asarray(arm, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"arm and baseline must be 1D of the same length, got {a.shape} and {b.shape}")
    d = a - b
    if unit == "pairs":
        low, high = bootstrap_mean_ci(d, n_boot, level, seed)
    elif unit == "pairs_and_cases":
        if case_diffs is None:
            raise ValueError("unit 'pairs_and_cases' needs the per-case differences")
        low, high = two_way_bootstrap_ci(case_diffs, n_boot, level, seed)
    else:
        raise ValueError(f"unit must be 'pairs' or 'pairs_and_cases', got {unit!r}")
    t_low, t_high = t_interval(d, level)
    return {
        "n_pairs": int(d.size),
        "arm_mean": float(a.mean()) if a.size else float("nan"),
        "baseline_mean": float(b.mean()) if b.size else float("nan"),
        "diff_mean": float(d.mean()) if d.size else float("nan"),
        "diff_sd": float(d.std(ddof=1)) if d.size > 1 else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "t_low": t_low,
        "t_high": t_high,
        "n_better": int((d > 0).sum()),
    }
