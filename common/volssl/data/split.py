"""Reproducible splits of a case pool into the four datalist roles."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from ..io import VolsslInputError

__all__ = ["make_split", "group_by_regex"]


def group_by_regex(pattern: str | None) -> Callable[[str], str]:
    """A grouping function: the first match of ``pattern`` in the case name (e.g. ``r"patient\\d+"`` keeps both
    ACDC phases of a patient together), or the case itself when ``pattern`` is ``None``."""
    if not pattern:
        return lambda name: name
    rx = re.compile(pattern)

    def group(name: str) -> str:
        m = rx.search(name)
        return m.group(0) if m else name

    return group


def make_split(
    cases: Sequence[str],
    n_labeled: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    group: Callable[[str], str] | None = None,
    n_unlabeled: int | None = None,
) -> dict[str, list[str]]:
    """Split ``cases`` into ``training`` (labelled), ``unlabeled``, ``validation`` and ``test``.

    Counts are in groups (patients) when ``group`` is given, so that all cases of one group share a role. The groups
    are shuffled once with ``seed``; test takes the first ``n_test``, validation the next ``n_val``, labelled the next
    ``n_labeled`` and the unlabelled pool the rest (or the next ``n_unlabeled``). Changing ``n_labeled`` therefore
    leaves the test and validation sets unchanged, and a smaller labelled set is a subset of a larger one.

    Raises:
        VolsslInputError: duplicate case names, negative counts, or more cases asked for than there are.
    """
    cases = [str(c) for c in cases]
    if len(set(cases)) != len(cases):
        dup = sorted({c for c in cases if cases.count(c) > 1})
        raise VolsslInputError("split", f"case(s) listed more than once: {dup[:5]}")
    if min(n_labeled, n_val, n_test) < 0 or (n_unlabeled is not None and n_unlabeled < 0):
        raise VolsslInputError("split", "counts must be non-negative")
    group = group or (lambda c: c)
    groups: dict[str, list[str]] = {}
    for c in sorted(cases):
        groups.setdefault(group(c), []).append(c)
    keys = sorted(groups)
    need = n_labeled + n_val + n_test + (n_unlabeled or 0)
    if need > len(keys):
        raise VolsslInputError(
            "split",
            f"asked for {need} groups (labelled {n_labeled}, validation {n_val}, test {n_test}) but only {len(keys)} exist",
        )
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    cut = np.cumsum([n_test, n_val, n_labeled])
    parts = {
        "test": order[: cut[0]],
        "validation": order[cut[0] : cut[1]],
        "training": order[cut[1] : cut[2]],
        "unlabeled": order[cut[2] :] if n_unlabeled is None else order[cut[2] : cut[2] + n_unlabeled],
    }
    return {role: sorted(c for g in gs for c in groups[g]) for role, gs in parts.items()}
