"""make_split and group_by_regex: disjoint, covering, reproducible, nested, patient-preserving splits."""

from __future__ import annotations

import re

import pytest

from volssl.data.split import group_by_regex, make_split
from volssl.io import VolsslInputError

CASES = [f"case_{i:03d}" for i in range(30)]
PATIENT_CASES = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 21) for f in (1, 2)]
ROLES = ("training", "unlabeled", "validation", "test")


def _all(split):
    return [c for role in ROLES for c in split[role]]


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
@pytest.mark.parametrize(
    "counts", [(2, 3, 4, None), (5, 0, 0, None), (0, 10, 10, None), (1, 2, 3, 4), (10, 10, 10, None)]
)
def test_roles_are_disjoint_covering_and_sized(seed, counts):
    n_labeled, n_val, n_test, n_unlabeled = counts
    split = make_split(CASES, n_labeled, n_val, n_test, seed=seed, n_unlabeled=n_unlabeled)
    assert set(split) == set(ROLES)
    everything = _all(split)
    assert len(everything) == len(set(everything)), "a case appears in two roles"
    assert set(everything) <= set(CASES)
    assert len(split["training"]) == n_labeled
    assert len(split["validation"]) == n_val
    assert len(split["test"]) == n_test
    if n_unlabeled is None:
        assert set(everything) == set(CASES), "without n_unlabeled the rest of the pool must be unlabelled"
        assert len(split["unlabeled"]) == len(CASES) - n_labeled - n_val - n_test
    else:
        assert len(split["unlabeled"]) == n_unlabeled


def test_same_seed_same_split_other_seed_other_split():
    a = make_split(CASES, 4, 5, 6, seed=3)
    b = make_split(list(reversed(CASES)), 4, 5, 6, seed=3)
    assert a == b, "the split must not depend on the input order"
    others = [make_split(CASES, 4, 5, 6, seed=s) for s in (4, 5, 6)]
    assert any(o["training"] != a["training"] for o in others)
    assert any(o["test"] != a["test"] for o in others)


@pytest.mark.parametrize("seed", [0, 2])
def test_smaller_labelled_set_is_a_subset_and_val_test_are_unchanged(seed):
    splits = [make_split(CASES, n, 4, 6, seed=seed) for n in range(0, 21)]
    for small, large in zip(splits, splits[1:]):
        assert set(small["training"]) < set(large["training"])
        assert small["validation"] == large["validation"]
        assert small["test"] == large["test"]
        assert set(large["unlabeled"]) < set(small["unlabeled"])


@pytest.mark.parametrize("seed", [0, 1, 9])
def test_group_regex_keeps_patients_together(seed):
    group = group_by_regex(r"patient\d+")
    split = make_split(PATIENT_CASES, 3, 2, 4, seed=seed, group=group)
    role_of_patient: dict[str, set[str]] = {}
    for role in ROLES:
        for case in split[role]:
            role_of_patient.setdefault(group(case), set()).add(role)
    assert all(len(roles) == 1 for roles in role_of_patient.values()), role_of_patient
    # counts are in patients: two frames each
    assert len(split["training"]) == 6 and len(split["validation"]) == 4 and len(split["test"]) == 8
    assert len(split["unlabeled"]) == len(PATIENT_CASES) - 18
    assert set(_all(split)) == set(PATIENT_CASES)


def test_group_by_regex_identity_and_no_match():
    assert group_by_regex(None)("patient001_frame01") == "patient001_frame01"
    group = group_by_regex(r"patient\d+")
    assert group("patient042_frame02") == "patient042"
    assert group("other_case") == "other_case"


def test_too_many_asked_raises():
    with pytest.raises(VolsslInputError, match=re.escape("asked for 31 groups")):
        make_split(CASES, 20, 6, 5)
    with pytest.raises(VolsslInputError, match="only 20 exist"):
        make_split(PATIENT_CASES, 15, 5, 1, group=group_by_regex(r"patient\d+"))
    with pytest.raises(VolsslInputError):
        make_split(CASES, 10, 10, 5, n_unlabeled=6)


def test_negative_counts_and_duplicates_raise():
    with pytest.raises(VolsslInputError, match="non-negative"):
        make_split(CASES, -1, 2, 2)
    with pytest.raises(VolsslInputError, match="more than once"):
        make_split(CASES + ["case_000"], 1, 1, 1)
