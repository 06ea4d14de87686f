"""The insights stage on the shared smoke run: its artifacts, the meaning map's cache,
the storyboard and examples against the run's own val_test, and the calibration views."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import ray_app.insights.projection as projection_module
from calibration.policy import Policy
from ray_app.errors import ExampleNotFound, InsightsError, InsightsNotReady
from ray_app.insights import example, meaning_map, saved_calibration_views, storyboard, summary
from ray_app.insights.outcomes import unique_row_ids
from ray_app.runs import Run
from ray_app.splits import load_predictions
from ray_app.stages import INSIGHTS
from ray_app.stages.context import StageContext

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def insights_run(calibrated):
    cfg, run, _ = calibrated
    INSIGHTS.run(StageContext(cfg, run))
    return cfg, run


def val_test_rows(run: Run) -> dict[str, dict]:
    """val_test straight from its Parquet files, by row id: what the insights must agree with."""
    table = pq.read_table(run.splits_dir / "val_test").to_pylist()
    ids = unique_row_ids(np.array([r["content_hash"] for r in table]), np.array([r["label_id"] for r in table]),
                         np.array([r["ref"] for r in table]))
    return dict(zip(ids.tolist(), table, strict=True))


def expected_outcomes(run: Run) -> dict[str, dict]:
    """Each val_test row's outcome computed here from the logits and the policy."""
    policy = Policy.model_validate_json((run.root / "calibration" / "policy.json").read_text())
    logits, labels = load_predictions(run, "val_test", "evaluate")
    with np.load(run.train.predictions("val_test")) as saved:
        ids = saved["ids"]
    probs = policy.calibrated(logits)
    names = json.loads((run.splits_dir / "splits.json").read_text())["label_names"]
    decisions = policy.decide(probs.max(axis=1))
    return {
        str(i): {"label": names[y], "prediction": names[p], "confidence": c, "decision": d, "correct": bool(y == p)}
        for i, y, p, c, d in zip(ids, labels, probs.argmax(1), probs.max(1), decisions, strict=True)
    }


def test_insights_stage_writes_every_artifact(insights_run) -> None:
    _, run = insights_run
    out = run.root / "insights"
    names = {p.name for p in out.iterdir()}
    assert {"outcomes.npz", "storyboard.json", "reference.json", "summary.json", "report.md",
            "meaning_map.png", "storyboard.png", "maps"} <= names
    assert (out / "meaning_map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = run.stage_info("insights")
    assert info["status"] == "complete"
    assert info["reads"] == {"insights": ["val_test"], "reference": ["train", "val_select", "val_test"]}
    assert info["n"] == len(val_test_rows(run)) == info["map"]["points"]
    reference = json.loads((out / "reference.json").read_text())
    assert reference["kind"].startswith("logistic regression on pixels (8x8")
    best = max(reference["tried"], key=lambda t: t["val_select_accuracy"])
    assert reference["C"] == best["C"]  # chosen on val_select
    assert reference["val_test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    report = (out / "report.md").read_text()
    assert "![meaning map](meaning_map.png)" in report and "![storyboard](storyboard.png)" in report
    assert f"{reference['val_test_accuracy']:.4f}" in report
    assert summary(run)["reference"]["val_test_accuracy"] == reference["val_test_accuracy"]


def test_meaning_map_is_deterministic_cached_and_recomputed_for_new_settings(
    insights_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, source = insights_run
    run = Run(tmp_path / source.name)
    shutil.copytree(source.root, run.root)
    shutil.rmtree(run.root / "insights" / "maps")
    calls: list[str] = []
    real_project = projection_module.project

    def counting_project(features, method, params, seed):
        calls.append(method)
        return real_project(features, method, params, seed)

    monkeypatch.setattr(projection_module, "project", counting_project)
    first = meaning_map(run)
    assert calls == ["pca"] and not first["cached"]
    cache = next((run.root / "insights" / "maps").glob("pca_*.json"))
    stamp = cache.stat().st_mtime_ns
    second = meaning_map(run, color="decision")
    assert calls == ["pca"] and second["cached"]  # the second request did no projection work
    assert cache.stat().st_mtime_ns == stamp
    assert [(p["x"], p["y"]) for p in second["points"]] == [(p["x"], p["y"]) for p in first["points"]]
    assert all(p["color"] == p["decision"] for p in second["points"])
    # the same coordinates as the insights stage computed for the original run
    assert first["key"] == summary(source)["map"]["key"]
    assert meaning_map(source)["points"] == first["points"]

    expected = expected_outcomes(run)
    assert {p["id"] for p in first["points"]} == set(expected) == set(val_test_rows(run))
    for point in first["points"]:
        want = expected[point["id"]]
        assert {k: point[k] for k in ("label", "prediction", "decision", "correct")} == {
            k: want[k] for k in ("label", "prediction", "decision", "correct")}
        assert point["confidence"] == pytest.approx(want["confidence"], abs=1e-6)

    # another method, another seed, fewer rows: new keys, new work; asked again, cached
    tsne = meaning_map(run, method="tsne", params={"perplexity": 10, "n_iter": 100}, seed=1)
    assert calls == ["pca", "tsne"] and tsne["key"] != first["key"] and not tsne["cached"]
    assert meaning_map(run, method="tsne", params={"perplexity": 10.0, "n_iter": 100}, seed=1)["cached"]
    sampled = meaning_map(run, max_points=20)
    assert calls == ["pca", "tsne", "pca"] and sampled["rows"] == {
        "total": first["rows"]["total"], "shown": 20, "max_points": 20, "sampled": True}
    # a sampled map made again from nothing (its cache file gone) is the same for its
    # seed; another seed samples other rows, under another key
    (run.root / "insights" / "maps" / f"pca_{sampled['key']}.json").unlink()
    remade = meaning_map(run, max_points=20)
    assert calls == ["pca", "tsne", "pca", "pca"] and not remade["cached"]
    assert remade["points"] == sampled["points"] and remade["key"] == sampled["key"]
    reseeded = meaning_map(run, max_points=20, seed=sampled["seed"] + 1)
    assert calls[-1] == "pca" and len(calls) == 5 and reseeded["key"] != sampled["key"]
    assert {p["id"] for p in reseeded["points"]} != {p["id"] for p in sampled["points"]}
    with pytest.raises(InsightsError, match="unknown color 'size'"):
        meaning_map(run, color="size")
    with pytest.raises(InsightsError, match="unknown meaning-map method 'umap'"):
        meaning_map(run, method="umap")


def test_another_model_invalidates_the_insights_and_gets_a_new_map(insights_run, tmp_path: Path) -> None:
    """Retrained weights (here: the saved model with one tensor changed, its val_test
    predictions exported again the way the train stage does) make the old insights
    stale, and the map made for the new model has another key."""
    import ray
    from safetensors.torch import load_file, save_file

    from ray_app.splits import SplitReader
    from ray_app.stages.train import save_val_test_predictions
    from trainers.predict import predict_outputs

    cfg, source = insights_run
    run = Run(tmp_path / source.name)
    shutil.copytree(source.root, run.root)
    model_dir = run.train.model_dir
    weights = load_file(str(model_dir / "model.safetensors"))
    name = next(k for k in weights if k.startswith("head."))
    weights[name] = weights[name] + 0.5
    save_file(weights, str(model_dir / "model.safetensors"))
    outputs = predict_outputs({"val_test": SplitReader(run.splits_dir).read("val_test", "predict")},
                              StageContext.for_config(cfg).input_spec, model_dir, 64, features=True, keep=("content_hash", "ref"))
    save_val_test_predictions(outputs["val_test"], run.train.predictions("val_test"), model_dir)
    assert ray.is_initialized()
    with pytest.raises(InsightsNotReady, match="describe an earlier model"):
        meaning_map(run)
    with pytest.raises(InsightsNotReady, match="make them again with: ray-app insights"):
        storyboard(run)
    INSIGHTS.run(StageContext(cfg, run))
    assert meaning_map(run)["key"] != meaning_map(source)["key"]


def test_storyboard_shows_val_test_examples_in_their_categories(insights_run) -> None:
    _, run = insights_run
    board = storyboard(run)
    expected = expected_outcomes(run)
    rows = val_test_rows(run)
    assert board["rule"] == "guardrail" and board["n"] == len(rows)
    shown = 0
    for category, entry in board["categories"].items():
        members = {i for i, o in expected.items() if {
            "confident_right": o["decision"] == "accept" and o["correct"],
            "confident_wrong": o["decision"] == "accept" and not o["correct"],
            "assist": o["decision"] == "assist",
            "abstain": o["decision"] == "abstain",
        }[category]}
        assert entry["count"] == len(members)
        for e in entry["examples"]:
            assert e["id"] in rows and e["id"] in members, (category, e)
            assert e["label"] == expected[e["id"]]["label"] and e["prediction"] == expected[e["id"]]["prediction"]
            shown += 1
    assert shown > 0
    matrix = np.array(json.loads((run.root / "eval" / "metrics.json").read_text())["confusion_matrix"]["matrix"])
    names = board["label_names"]
    for pair in board["confused_pairs"]:
        a, b = (names.index(c) for c in pair["classes"])
        assert pair["count"] == matrix[a, b] + matrix[b, a] > 0
        assert all(e["id"] in rows and not e["correct"] for e in pair["examples"])
    off_diagonal = matrix + matrix.T
    np.fill_diagonal(off_diagonal, 0)
    if board["confused_pairs"]:
        assert board["confused_pairs"][0]["count"] == off_diagonal.max()


def test_example_returns_the_val_test_image_as_a_thumbnail(insights_run) -> None:
    _, run = insights_run
    rows = val_test_rows(run)
    expected = expected_outcomes(run)
    example_id = sorted(rows)[0]
    shown = example(run, example_id)
    assert shown["kind"] == "image" and shown["media_type"] == "image/png" and shown["id"] == example_id
    assert shown["label"] == expected[example_id]["label"] and shown["decision"] == expected[example_id]["decision"]
    assert shown["original_size"] == [8, 8] and shown["thumbnail_size"] == [128, 128]
    with Image.open(io.BytesIO(base64.b64decode(shown["image"]))) as thumbnail:
        enlarged = np.asarray(thumbnail)
    with Image.open(io.BytesIO(rows[example_id]["image"])) as original:
        pixels = np.asarray(original)
    np.testing.assert_array_equal(enlarged[::16, ::16], pixels)  # whole pixels, enlarged 16×
    assert shown["source"] == rows[example_id]["ref"]
    with pytest.raises(ExampleNotFound, match="has no val_test example 'nope'"):
        example(run, "nope")
    with pytest.raises(InsightsError, match="thumbnail_px must be an integer from 8 to 512"):
        example(run, example_id, thumbnail_px=4096)


def test_calibration_views_and_report_plots(insights_run) -> None:
    _, run = insights_run
    views = saved_calibration_views(run)
    n_calib = json.loads((run.splits_dir / "splits.json").read_text())["splits"]["val_calib"]["count"]
    assert views["split"] == "val_calib" and views["n"] == n_calib
    for panel in views["reliability"].values():
        assert sum(b["count"] for b in panel["bins"]) == n_calib
    assert sum(views["decision_histogram"]["totals"].values()) == n_calib
    guardrail = json.loads((run.root / "calibration" / "guardrail.json").read_text())
    heat = views["guardrail"]
    assert len(heat["centers"]) * len(heat["widths"]) == guardrail["trials"]
    assert heat["chosen"] == {"center": guardrail["center"], "width": guardrail["width"]} and heat["chosen_is_policy"]
    report = (run.root / "calibration" / "report.md").read_text()
    for png in ("reliability.png", "risk_coverage.png", "confidence_by_decision.png", "guardrail_heatmap.png"):
        assert f"({png})" in report and (run.root / "calibration" / png).is_file()
