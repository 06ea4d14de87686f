"""Run insights without Ray: row ids, the map's row sample and projections, the
storyboard's categories, the calibration views, the split contract of the insights
readers, and the budget's FLOP count against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.policy import Policy
from calibration.threshold import candidate_thresholds, sweep_thresholds
from calibration.views import MIN_BIN_COUNT, build_views
from ray_app.errors import InsightsError, SplitContractError
from ray_app.insights.outcomes import Outcomes, base_id, unique_row_ids
from ray_app.insights.projection import cache_key, project, resolve_params, sample_rows
from ray_app.insights.story import CATEGORIES, build_storyboard, category_mask
from ray_app.splits import check_access
from ray_app.stages import INSIGHTS
from tests.helpers.references import exhaustive_guardrail


def outcomes(rule: str = "guardrail", n: int = 300, classes: int = 4, seed: int = 0) -> Outcomes:
    """Outcomes of a made-up model: right about 70% of the time, its decisions those of
    a real policy of the given rule."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    predictions = np.where(rng.random(n) < 0.7, labels, (labels + rng.integers(1, classes, n)) % classes)
    confidence = np.round(rng.uniform(0.3, 1.0, n), 2)  # rounded: many ties, to test their order
    policy = {
        "guardrail": Policy(rule="guardrail", center=0.7, width=0.2),
        "threshold": Policy(rule="threshold", threshold=0.6),
        "none": Policy(rule="none"),
    }[rule]
    ids = np.array([f"{i:012x}" for i in range(n)])
    return Outcomes(
        ids=ids, content_hashes=ids, labels=labels, predictions=predictions, confidence=confidence,
        decisions=np.asarray(policy.decide(confidence), dtype=str), label_names=[f"c{k}" for k in range(classes)],
        rule=rule, model_sha256="0" * 64,
    )


def test_row_ids_are_unique_and_name_identical_rows_apart() -> None:
    ids = unique_row_ids(np.array(["h1", "h2", "h1", "h1", "h1"]), np.array([0, 0, 0, 1, 0]),
                         np.array(["a", "a", "a", "a", "a"]))
    assert len(set(ids)) == 5
    # three identical rows (same content, label and source): one base id, suffixes apart
    assert ids[2] == f"{ids[0]}~1" and ids[4] == f"{ids[0]}~2" and base_id(ids[4]) == ids[0]
    assert base_id(ids[3]) != ids[0]  # the same content under another label is another example


def test_map_rows_sample_is_seeded_capped_and_order_free() -> None:
    ids = np.array([f"id{i}" for i in range(1000)])
    chosen = ids[sample_rows(ids, 100, seed=3)]
    assert len(chosen) == 100 == len(set(chosen))
    shuffled = np.random.default_rng(0).permutation(ids)
    assert sorted(shuffled[sample_rows(shuffled, 100, seed=3)]) == sorted(chosen)
    assert set(ids[sample_rows(ids, 100, seed=4)]) != set(chosen)
    assert list(sample_rows(ids[:50], 100, seed=3)) == list(range(50))  # under the cap: all


def test_projections_are_deterministic_and_keys_tell_settings_apart() -> None:
    rng = np.random.default_rng(1)
    features = np.concatenate([rng.normal(0, 1, (40, 16)), rng.normal(4, 1, (40, 16))])
    first, extra = project(features, "pca", resolve_params("pca", None), seed=0)
    again, _ = project(features, "pca", resolve_params("pca", {}), seed=0)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (80, 2) and extra["explained_variance_ratio"][0] > 0.5  # two clusters, one axis
    params = resolve_params("tsne", {"perplexity": 10, "n_iter": 100})
    a, _ = project(features, "tsne", params, seed=7)
    b, _ = project(features, "tsne", params, seed=7)
    np.testing.assert_allclose(a, b)
    # the two clusters stay apart in t-SNE too
    assert np.linalg.norm(a[:40].mean(0) - a[40:].mean(0)) > 2 * a[:40].std(0).mean()
    ids = np.array(["x", "y"])
    keys = {
        cache_key("m1", ids, "pca", resolve_params("pca", None), 0),
        cache_key("m2", ids, "pca", resolve_params("pca", None), 0),
        cache_key("m1", ids[:1], "pca", resolve_params("pca", None), 0),
        cache_key("m1", ids, "tsne", params, 0),
        cache_key("m1", ids, "tsne", params, 1),
        cache_key("m1", ids, "pca", resolve_params("pca", {"whiten": True}), 0),
    }
    assert len(keys) == 6
    assert cache_key("m1", ids, "pca", resolve_params("pca", {}), 0) == cache_key(
        "m1", ids, "pca", resolve_params("pca", {"whiten": False}), 0)


def test_bad_projection_requests_say_what_to_change() -> None:
    with pytest.raises(InsightsError, match=r"unknown meaning-map method 'umap'; use one of \['pca', 'tsne'\]"):
        resolve_params("umap", None)
    with pytest.raises(InsightsError, match=r"params for tsne: perplexity: .*less than or equal to 100 \(got 500\)"):
        resolve_params("tsne", {"perplexity": 500})
    with pytest.raises(InsightsError, match=r"pca: colour: Extra inputs.*its parameters are: whiten"):
        resolve_params("pca", {"colour": "red"})
    with pytest.raises(InsightsError, match=r"perplexity 30 needs more than 90 points and the map has 50"):
        project(np.random.default_rng(0).normal(size=(50, 4)), "tsne", resolve_params("tsne", None), 0)


@pytest.mark.parametrize("rule", ["guardrail", "threshold", "none"])
def test_storyboard_examples_lie_in_their_category_in_order(rule: str) -> None:
    table = outcomes(rule)
    board = build_storyboard(table, per_category=5, pairs=3)
    index = table.index_of()
    for category in CATEGORIES:
        entry = board["categories"][category]
        members = set(table.ids[category_mask(table, category)])
        assert entry["count"] == len(members)
        assert all(e["id"] in members for e in entry["examples"])
        assert len(entry["examples"]) == min(5, len(members))
        confidences = [e["confidence"] for e in entry["examples"]]
        descending = category != "abstain"
        assert confidences == sorted(confidences, reverse=descending)
        # ties in confidence go by id, and the chosen are the extreme ones
        keyed = [(-c if descending else c, e["id"]) for c, e in zip(confidences, entry["examples"], strict=True)]
        assert keyed == sorted(keyed)
        if members:
            rest = [table.confidence[index[i]] for i in members]
            edge = max(rest) if descending else min(rest)
            assert confidences[0] == pytest.approx(edge)
        for e in entry["examples"]:
            row = table.row(index[e["id"]])
            assert e == row
    assist, abstain = board["categories"]["assist"], board["categories"]["abstain"]
    assert assist["available"] == (rule == "guardrail")
    if rule != "guardrail":
        assert f"policy rule '{rule}' has no assist band" in assist["reason"] and assist["examples"] == []
    assert abstain["available"] == (rule != "none")


def test_confused_pairs_are_the_largest_off_diagonal_sums() -> None:
    table = outcomes("none", n=500, classes=5, seed=3)
    pairs = build_storyboard(table, 4, 3)["confused_pairs"]
    matrix = np.zeros((5, 5), dtype=int)
    np.add.at(matrix, (table.labels, table.predictions), 1)
    totals = sorted(((matrix[a, b] + matrix[b, a], a, b) for a in range(5) for b in range(a + 1, 5)),
                    key=lambda t: (-t[0], t[1], t[2]))
    assert [(p["count"], p["classes"]) for p in pairs] == [(t, [f"c{a}", f"c{b}"]) for t, a, b in totals[:3]]
    for pair in pairs:
        assert sum(d["count"] for d in pair["directions"]) == pair["count"]
        assert all({e["label"], e["prediction"]} == set(pair["classes"]) for e in pair["examples"])


def test_calibration_views_count_every_sample_and_mark_infeasible_bands() -> None:
    rng = np.random.default_rng(0)
    n = 400
    confidence = rng.beta(5, 1.5, n)
    correct = rng.random(n) < confidence
    preds = rng.integers(0, 3, n)
    labels = np.where(correct, preds, (preds + 1) % 3)
    centers, widths = [0.5, 0.7, 0.9], [0.0, 0.1, 0.3]
    best, rows = exhaustive_guardrail(confidence, correct, centers, widths, 0.15, 0.5)
    policy = Policy(rule="guardrail", center=best["center"], width=best["width"])
    sweep = sweep_thresholds(confidence, preds, labels, candidate_thresholds(confidence, 50), 3)
    views = build_views(uncalibrated=(confidence ** 2, correct), calibrated=(confidence, correct), policy=policy,
                              sweep=sweep, marks={}, guardrail={**best, "results": rows}, n_bins=15)
    for panel in views["reliability"].values():
        assert sum(b["count"] for b in panel["bins"]) == n and len(panel["bins"]) == 15
        assert all(b["small"] == (b["count"] < MIN_BIN_COUNT) for b in panel["bins"])
        assert all(b["accuracy"] is None for b in panel["bins"] if b["count"] == 0)
    histogram = views["decision_histogram"]
    decisions = policy.decide(confidence)
    assert histogram["totals"] == {d: int((decisions == d).sum()) for d in ("accept", "assist", "abstain")}
    assert {k: sum(v) for k, v in histogram["counts"].items()} == histogram["totals"]
    assert histogram["cuts"] == pytest.approx({"assist_from": best["center"] - best["width"] / 2,
                                               "accept_from": best["center"] + best["width"] / 2})
    chosen = views["risk_coverage"]["chosen"]
    assert chosen["coverage"] == pytest.approx(best["coverage"])
    assert chosen["selective_risk"] == pytest.approx(1 - best["accepted_accuracy"])
    heat = views["guardrail"]
    assert (heat["centers"], heat["widths"]) == (centers, widths)
    by_cell = {(r["center"], r["width"]): r for r in rows}
    for i, c in enumerate(centers):
        for j, w in enumerate(widths):
            assert heat["cells"][i][j]["feasible"] == by_cell[(c, w)]["feasible"]
            assert heat["cells"][i][j]["chosen"] == ((c, w) == (best["center"], best["width"]))
    assert any(not cell["feasible"] for line in heat["cells"] for cell in line)
    assert heat["chosen_is_policy"]
    none_views = build_views(uncalibrated=(confidence, correct), calibrated=(confidence, correct),
                                   policy=Policy(rule="threshold", threshold=0.8), sweep=sweep, marks={},
                                   guardrail=None, n_bins=10)
    assert set(none_views["decision_histogram"]["counts"]) == {"accept", "abstain"}  # no band, no assist series
    assert none_views["guardrail"] is None


def test_insights_readers_keep_to_their_splits() -> None:
    check_access("val_test", "insights")
    for split in ("train", "val_select", "val_calib"):
        with pytest.raises(SplitContractError, match=f"stage 'insights' may not read '{split}'"):
            check_access(split, "insights")
    for split in ("train", "val_select", "val_test"):
        check_access(split, "reference")
    with pytest.raises(SplitContractError, match="stage 'reference' may not read 'val_calib'"):
        check_access("val_calib", "reference")
    for split in ("val_calib", "val_test"):
        with pytest.raises(SplitContractError, match=f"stage 'budget' may not read '{split}'"):
            check_access(split, "budget")


def test_insights_stage_line() -> None:
    info = {"n": 73, "map": {"points": 73}, "storyboard": {"confident_wrong": 4}, "model_accuracy": 0.81,
            "reference": {"val_test_accuracy": 0.9041}}
    assert INSIGHTS.summary(info) == (
        "map of 73 points (pca), storyboard 4 confident wrong of 73, linear reference 0.9041 vs model 0.8100")
    assert INSIGHTS.summary({"disabled": True}) == "off (insights.enabled: false)"


def vit_config(hidden: int = 48, layers: int = 3, mlp: int = 96, image: int = 16, patch: int = 4, heads: int = 4):
    from trainers.config import ModelConfig

    return ModelConfig(backbone={"config": {
        "model_type": "vit", "image_size": image, "patch_size": patch, "num_channels": 3, "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": mlp,
    }}, pooling="cls")


def test_flops_of_a_tiny_vit_match_a_hand_count() -> None:
    import torch

    from ray_app.budget import model_flops
    from trainers.model import build_classifier

    d, layers, m, image, patch, labels = 48, 3, 96, 16, 4, 7
    model = build_classifier(vit_config(d, layers, m, image, patch), labels)
    batch = {"pixel_values": torch.randn(2, 3, image, image), "labels": torch.tensor([0, 1])}
    counted = model_flops(model, batch)
    n = (image // patch) ** 2
    s = n + 1  # patches + CLS
    embed = 2 * n * (3 * patch * patch) * d  # the patch projection (a strided convolution)
    per_layer = 2 * s * d * (3 * d)  # q, k, v
    per_layer += 2 * s * s * d * 2  # scores q·k and the weighted sum of v
    per_layer += 2 * s * d * d  # attention output
    per_layer += 2 * s * d * m * 2  # MLP up and down
    head = 2 * d * labels
    forward = embed + layers * per_layer + head
    # backward: a gradient for every weight (as much as the forward) and for every
    # activation but the pixels (the forward again, less the patch projection's input)
    backward = 2 * forward - embed
    assert counted["forward"] == pytest.approx(forward, rel=0.10)
    assert counted["backward"] == pytest.approx(backward, rel=0.10)
    assert counted["inference"] == pytest.approx(counted["forward"])
    # a frozen backbone needs no weight gradients there: the backward shrinks
    model.backbone.requires_grad_(False)
    frozen = model_flops(model, batch)["backward"]
    assert frozen < 0.6 * counted["backward"]


def test_insights_report_shows_the_confused_pairs_examples_with_their_text(tmp_path) -> None:
    from ray_app.insights.report import write_insights_report
    from ray_app.runs import InsightsLayout

    table = outcomes("guardrail", n=200, classes=3, seed=5)
    board = build_storyboard(table, per_category=3, pairs=2)
    assert board["confused_pairs"]
    shown = {e["id"] for c in CATEGORIES for e in board["categories"][c]["examples"]}
    shown |= {e["id"] for p in board["confused_pairs"] for e in p["examples"]}
    texts = {i: f"review number {i}" for i in shown}
    projection = {"method": "pca", "ids": [], "x": [], "y": []}
    model = {"description": "bert-h32-l2 baseline", "accuracy": 0.7, "macro_f1": 0.69}
    report = write_insights_report(InsightsLayout(tmp_path), "../calibration/report.md", "r", model, None, None,
                                   projection, board, texts, storyboard_png=False).read_text()
    section = report.split("### most confused class pairs", 1)[1]
    for pair in board["confused_pairs"]:
        for e in pair["examples"]:
            # each example of a pair on its own line, with its outcome and its text
            line = next(x for x in section.splitlines() if f"`{e['id']}`" in x)
            assert f"| {e['label']} | {e['prediction']} | {e['confidence']:.3f} | {e['decision']} |" in line
            assert texts[e["id"]] in line
    assert "![storyboard]" not in report


def test_storyboard_picture_has_a_row_per_outcome_and_one_for_the_confused_pairs(tmp_path) -> None:
    import io

    from PIL import Image

    from ray_app.insights.report import _storyboard_rows, draw_storyboard

    table = outcomes("guardrail", n=200, classes=3, seed=5)
    board = build_storyboard(table, per_category=3, pairs=2)
    rows = _storyboard_rows(board)
    assert [label.split("\n")[0] for label, _, _ in rows] == [c.replace("_", " ") for c in CATEGORIES] + ["confused"]
    pairs_row = rows[-1][1]
    assert [e for _, e in pairs_row] == [p["examples"][0] for p in board["confused_pairs"]]
    assert all(title.startswith(" / ".join(p["classes"])) for (title, _), p in zip(pairs_row, board["confused_pairs"],
                                                                                    strict=True))
    # three decimals: two would show the most confident examples as 1.00
    first = board["categories"]["confident_right"]["examples"][0]
    assert rows[0][1][0][0].endswith(f"{first['confidence']:.3f}")

    def png(shade: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("L", (8, 8), shade).save(buffer, format="PNG")
        return buffer.getvalue()

    images = {e["id"]: png(i % 256) for i, (_, shown, _) in enumerate(rows) for _, e in shown}
    draw_storyboard(board, images, tmp_path / "storyboard.png")
    with Image.open(tmp_path / "storyboard.png") as picture:
        assert picture.size[0] > 300 and picture.size[1] > 5 * 150  # five rows of thumbnails
