"""The meaning map: where val_test's rows sit in the final model's feature space, in 2-D.

The pooled features the model computed for val_test (exported with its logits, in the
same inference pass) are projected to two dimensions on the server: PCA by default
(deterministic and fast), t-SNE (openTSNE) on request. A projection is cached in the
run under a key of everything it depends on — the model's weights hash, the rows (all
of val_test up to `insights.max_points`, a seeded sample beyond), the method, its
parameters and the seed — so asking again costs a file read, and anything that would
change the picture changes the key. The policy is not in the key: a new calibration
changes each point's confidence and decision, not where the point is, so those are
joined from the run's outcomes at every request.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from ray_app.config import load_config
from ray_app.errors import InsightsError
from ray_app.insights.outcomes import Outcomes, load_val_test
from ray_app.runs import InsightsLayout, Run, write_json
from trainers.schema import StrictModel, validation_problems

COLOR_FIELDS = ("label", "prediction", "decision", "correct")


class PcaParams(StrictModel):
    whiten: bool = Field(default=False, description="Scale both components to unit variance.")


class TsneParams(StrictModel):
    perplexity: float = Field(
        default=30.0, gt=1.0, le=100.0,
        description="Effective number of neighbours; must stay below a third of the points.",
    )
    n_iter: int = Field(default=500, ge=50, le=5000, description="Optimisation iterations after early exaggeration.")
    metric: Literal["euclidean", "cosine"] = Field(default="euclidean", description="Distance between features.")


METHODS: dict[str, type[BaseModel]] = {"pca": PcaParams, "tsne": TsneParams}


def resolve_params(method: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The method's parameters with defaults filled in (so that {} and the defaults
    spelled out share one cache entry), or an InsightsError saying what is wrong."""
    if method not in METHODS:
        raise InsightsError(f"unknown meaning-map method '{method}'; use one of {sorted(METHODS)}")
    if params is not None and not isinstance(params, dict):
        raise InsightsError(f"meaning-map params must be a mapping of names to values, got {type(params).__name__}")
    try:
        return METHODS[method].model_validate(params or {}).model_dump()
    except ValidationError as exc:
        problems = "; ".join(validation_problems(exc, top_level="params"))
        known = ", ".join(METHODS[method].model_fields)
        raise InsightsError(f"meaning-map params for {method}: {problems}; its parameters are: {known}") from None


def sample_rows(ids: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Indices of the rows on the map, ascending: all of them up to `max_points`, else
    the `max_points` ids with the smallest seeded hash — the same rows for the same
    seed whatever order the ids come in."""
    if len(ids) <= max_points:
        return np.arange(len(ids))
    ranks = np.array([hashlib.sha256(f"{seed}:{x}".encode()).hexdigest() for x in ids])
    return np.sort(np.argsort(ranks, kind="stable")[:max_points])


def cache_key(model_sha256: str, ids: np.ndarray, method: str, params: dict[str, Any], seed: int) -> str:
    blob = json.dumps(
        {
            "model_sha256": model_sha256,
            "rows": hashlib.sha256("\n".join(str(x) for x in ids).encode()).hexdigest(),
            "n": len(ids),
            "method": method,
            "params": params,
            "seed": seed,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def project(features: np.ndarray, method: str, params: dict[str, Any], seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """(n, 2) coordinates of `features` and what the method has to say about them."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 3:
        raise InsightsError(f"a meaning map needs at least 3 rows, val_test has {len(features)}")
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, whiten=params["whiten"], svd_solver="full", random_state=seed)
        coordinates = pca.fit_transform(features)
        return coordinates, {"explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_]}
    if params["perplexity"] * 3 >= len(features):
        raise InsightsError(
            f"t-SNE perplexity {params['perplexity']:g} needs more than {int(params['perplexity'] * 3)} points "
            f"and the map has {len(features)}: choose a perplexity below {len(features) / 3:.1f}"
        )
    from openTSNE import TSNE

    embedding = TSNE(
        n_components=2, perplexity=params["perplexity"], n_iter=params["n_iter"], metric=params["metric"],
        random_state=seed, n_jobs=1, verbose=False,
    ).fit(features)
    return np.asarray(embedding, dtype=np.float64), {"kl_divergence": float(embedding.kl_divergence)}


def run_settings(run: Run) -> tuple[int, int]:
    """(insights.max_points, insights.seed) from the run's resolved config."""
    cfg = load_config(run.config_path)
    return cfg.insights.max_points, cfg.insights.seed


def compute_projection(
    run: Run, outcomes: Outcomes, method: str, params: dict[str, Any], seed: int, max_points: int,
    layout: InsightsLayout | None = None,
) -> tuple[dict[str, Any], bool]:
    """The cached projection for these settings, computed and stored when missing.
    Returns (projection, whether it came from the cache). `layout`: where the insights
    are (the run's, unless the insights stage is building a new set)."""
    rows = sample_rows(outcomes.ids, max_points, seed)
    ids = outcomes.ids[rows]
    key = cache_key(outcomes.model_sha256, ids, method, params, seed)
    path = (layout or run.insights).map(method, key)
    if path.is_file():
        return json.loads(path.read_text()), True
    saved = load_val_test(run, "ids", "features")
    position = {str(x): i for i, x in enumerate(saved["ids"])}
    features = saved["features"][[position[str(x)] for x in ids]]
    started = time.monotonic()
    coordinates, extra = project(features, method, params, seed)
    projection = {
        "key": key,
        "method": method,
        "params": params,
        "seed": seed,
        "model_sha256": outcomes.model_sha256,
        "feature_dim": int(features.shape[1]),
        "ids": [str(x) for x in ids],
        "x": [round(float(v), 5) for v in coordinates[:, 0]],
        "y": [round(float(v), 5) for v in coordinates[:, 1]],
        "seconds": round(time.monotonic() - started, 4),
        **extra,
    }
    write_json(path, projection)  # atomic: a concurrent request reads all or nothing
    return projection, False


def meaning_map(
    run: Run,
    method: str = "pca",
    params: dict[str, Any] | None = None,
    seed: int | None = None,
    color: str | None = None,
    max_points: int | None = None,
) -> dict[str, Any]:
    """The 2-D map of val_test in the model's feature space, one point per row with its
    id, coordinates, true label, prediction, calibrated confidence, the policy's
    decision and whether it is right. `seed` and `max_points` default to the run's
    `insights.seed` / `insights.max_points`; `color` (one of label, prediction,
    decision, correct) adds a `color` field per point with that field's value."""
    if color is not None and color not in COLOR_FIELDS:
        raise InsightsError(f"unknown color '{color}'; color points by one of {list(COLOR_FIELDS)}")
    resolved = resolve_params(method, params)
    default_points, default_seed = run_settings(run)
    seed = default_seed if seed is None else seed
    max_points = default_points if max_points is None else max_points
    if not isinstance(seed, int) or seed < 0:
        raise InsightsError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(max_points, int) or max_points < 3:
        raise InsightsError(f"max_points must be an integer of at least 3, got {max_points!r}")
    outcomes = Outcomes.load(run)
    projection, cached = compute_projection(run, outcomes, method, resolved, seed, max_points)
    index = outcomes.index_of()
    points = []
    for example_id, x, y in zip(projection["ids"], projection["x"], projection["y"], strict=True):
        point = {**outcomes.row(index[example_id]), "x": x, "y": y}
        if color is not None:
            point["color"] = point[color]
        points.append(point)
    extra = {k: projection[k] for k in ("explained_variance_ratio", "kl_divergence") if k in projection}
    return {
        "run": run.name,
        "split": "val_test",
        "method": method,
        "params": resolved,
        "seed": seed,
        "key": projection["key"],
        "cached": cached,
        "seconds": projection["seconds"],
        "model_sha256": outcomes.model_sha256,
        "feature_dim": projection["feature_dim"],
        "rows": {"total": len(outcomes), "shown": len(points), "max_points": max_points,
                 "sampled": len(points) < len(outcomes)},
        "label_names": outcomes.label_names,
        "rule": outcomes.rule,
        "color": color,
        **extra,
        "points": points,
    }
