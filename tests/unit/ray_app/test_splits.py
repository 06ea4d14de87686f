from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from ray_app.config import SPLIT_NAMES, SplitsConfig
from ray_app.errors import DataError, SplitContractError
from ray_app.splits import STAGE_SPLITS, allocate, check_access, label_order, plan_splits


def dataset(class_sizes: dict[str, int], seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    hashes, labels = [], []
    for label, n in class_sizes.items():
        for i in range(n):
            hashes.append(hashlib.sha256(f"{label}-{i}".encode()).hexdigest()[:32])
            labels.append(label)
    order = rng.permutation(len(hashes))
    return [hashes[i] for i in order], [labels[i] for i in order]


SIZES = {"cat": 200, "dog": 120, "eel": 41}


def test_allocate_sums_and_minimum() -> None:
    ratios = [0.6, 0.15, 0.1, 0.15]
    for n in range(4, 300):
        counts = allocate(n, ratios)
        assert sum(counts) == n and min(counts) >= 1
    assert allocate(100, ratios) == [60, 15, 10, 15]
    assert allocate(4, ratios) == [1, 1, 1, 1]


def test_splits_are_disjoint_complete_and_stratified() -> None:
    hashes, labels = dataset(SIZES)
    plan = plan_splits(hashes, labels, SplitsConfig(), seed=0)
    assert set(plan.assignment) == set(hashes)  # complete: every row lands in a split
    assert set(plan.assignment.values()) == set(SPLIT_NAMES)
    splits = plan.summary["splits"]
    assert sum(s["count"] for s in splits.values()) == len(hashes)
    ratios = SplitsConfig().ratios.as_dict()
    for label, size in SIZES.items():
        for split in SPLIT_NAMES:
            share = splits[split]["class_counts"][label] / size
            # largest remainder: within one sample of the exact share, for every class
            assert abs(share - ratios[split]) <= 1 / size + 1e-9, (label, split)


def test_same_data_and_seed_give_identical_json_whatever_the_row_order() -> None:
    hashes, labels = dataset(SIZES, seed=1)
    a = plan_splits(hashes, labels, SplitsConfig(), seed=7)
    shuffled = np.random.default_rng(3).permutation(len(hashes))
    b = plan_splits([hashes[i] for i in shuffled], [labels[i] for i in shuffled], SplitsConfig(), seed=7)
    assert a.to_json() == b.to_json()
    assert a.assignment == b.assignment
    c = plan_splits(hashes, labels, SplitsConfig(), seed=8)
    assert c.assignment != a.assignment
    assert c.summary["source_fingerprint"] == a.summary["source_fingerprint"]


def test_splits_json_records_the_contract_fields() -> None:
    hashes, labels = dataset(SIZES)
    summary = json.loads(plan_splits(hashes, labels, SplitsConfig(), seed=0).to_json())
    assert summary["seed"] == 0 and summary["stratify"] is True
    assert summary["ratios"] == {"train": 0.6, "val_select": 0.15, "val_calib": 0.1, "val_test": 0.15}
    assert summary["label_names"] == ["cat", "dog", "eel"]
    for info in summary["splits"].values():
        assert set(info) == {"count", "class_counts", "content_hash"}
        assert len(info["content_hash"]) == 64
    hashes_of_splits = {info["content_hash"] for info in summary["splits"].values()}
    assert len(hashes_of_splits) == 4


def test_duplicates_stay_together_and_are_reported() -> None:
    hashes, labels = dataset({"a": 30, "b": 30})
    hashes += hashes[:5] * 2  # five contents appearing three times each
    labels += labels[:5] * 2
    hashes.append(hashes[10])  # same content, other label: a conflict
    labels.append("b" if labels[10] == "a" else "a")
    plan = plan_splits(hashes, labels, SplitsConfig(), seed=0)
    dup = plan.summary["duplicates"]
    assert dup["duplicate_groups"] == 6
    assert dup["duplicate_rows"] == 5 * 3 + 2
    assert dup["conflicting_label_groups"] == 1
    assert dup["across_splits"] == 0
    assert plan.summary["num_rows_used"] == len(hashes)


def test_single_class_is_refused() -> None:
    hashes, labels = dataset({"only": 50})
    with pytest.raises(DataError, match="single class \\('only'\\)"):
        plan_splits(hashes, labels, SplitsConfig(), seed=0)


def test_class_too_small_names_the_class() -> None:
    hashes, labels = dataset({"big": 50, "tiny": 3})
    with pytest.raises(DataError, match="'tiny': 3.*at least 4"):
        plan_splits(hashes, labels, SplitsConfig(), seed=0)
    # without stratification the pool is large enough
    plan = plan_splits(hashes, labels, SplitsConfig(stratify=False), seed=0)
    assert plan.summary["num_rows_used"] == 53


def test_max_samples_is_a_deterministic_stratified_subsample() -> None:
    hashes, labels = dataset(SIZES)
    plan = plan_splits(hashes, labels, SplitsConfig(max_samples=100), seed=0)
    used = plan.summary["num_rows_used"]
    assert 95 <= used <= 105
    kept = Counter(label for h, label in zip(hashes, labels) if h in plan.assignment)
    assert kept["cat"] > kept["dog"] > kept["eel"] >= 4
    assert plan.to_json() == plan_splits(hashes, labels, SplitsConfig(max_samples=100), seed=0).to_json()


def test_label_order_is_numeric_when_labels_are_integers() -> None:
    assert label_order(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert label_order(["b", "a", "10"]) == ["10", "a", "b"]


def test_split_contract() -> None:
    check_access("train", "train")
    check_access("val_select", "train")
    check_access("val_calib", "calibrate")
    check_access("val_test", "evaluate")
    for forbidden in ("val_calib", "val_test"):
        with pytest.raises(SplitContractError, match="stage 'train' may not read"):
            check_access(forbidden, "train")
    with pytest.raises(SplitContractError, match="stage 'calibrate' may not read 'val_test'"):
        check_access("val_test", "calibrate")
    with pytest.raises(SplitContractError, match="may not read 'val_calib'"):
        check_access("val_calib", "evaluate")
    with pytest.raises(SplitContractError, match="unknown split"):
        check_access("holdout", "train")
    # no stage other than predict (frozen model) may see both val_calib and val_test
    for stage, allowed in STAGE_SPLITS.items():
        if stage != "predict":
            assert not {"val_calib", "val_test"} <= allowed
