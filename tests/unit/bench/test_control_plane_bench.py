"""bench/control_plane.py at a tiny size: its synthetic runs are runs the index reads as
the pipeline's, and its naive server answers exactly as ray-app's does, so the timings
it reports compare two ways of giving the same answer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from tests.helpers.configs import REPO


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("control_plane_bench", REPO / "bench" / "control_plane.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    bench = load_bench()
    runs = tmp_path_factory.mktemp("bench") / "runs"
    data = bench.generate_runs(runs, 50, 1000)
    with bench.serving(bench.create_ray_app(runs)) as ours, bench.serving(bench.create_naive_app(runs)) as naive:
        yield bench, data, runs, ours, naive


def test_the_synthetic_runs_are_indexed_as_real_ones(servers: Any) -> None:
    bench, data, runs, ours, _ = servers
    assert data["runs"] == 50 and sum(data["status"].values()) == 50
    assert set(data["family"]) == {"vit", "dinov2", "dinov3_vit", "bert"}
    listed = requests.get(f"{ours}/api/v1/runs?limit=500", timeout=30).json()
    assert listed["total"] == 50
    # Every config validated as its family (an invalid one would leave the family empty).
    assert all(r["family"] in {"vit", "dinov2", "dinov3_vit", "bert"} and r["backbone"] for r in listed["runs"])
    assert {r["status"] for r in listed["runs"]} >= {"succeeded", "failed", "running"}
    assert any(r["template"] for r in listed["runs"]) and any(r["template"] is None for r in listed["runs"])
    long = requests.get(f"{ours}/api/v1/runs/{bench.LONG_RUN}/metrics?limit=2&order=desc", timeout=30).json()
    assert [r["epoch"] for r in long["rows"]] == [999, 998]
    assert {"epoch", "lr", "train/loss", "val_select/accuracy", "val_select/macro_f1"} <= set(long["rows"][0])


@pytest.mark.parametrize("query", [
    "/api/v1/runs?status=succeeded&family=vit&limit=50",
    "/api/v1/runs?limit=7&offset=3",
    "/api/v1/runs?sort=val_test/accuracy&limit=40",
    "/api/v1/runs?sort=val_select/loss&order=desc&limit=40",
    "/api/v1/runs?sort=name&order=asc&template=bert-h32-l2_reviews_peft",
    "/api/v1/runs?q=DINOV3&status=failed",
    "/api/v1/runs?status=running",
    "/api/v1/runs?family=nope",
])
def test_both_servers_list_the_same_runs(servers: Any, query: str) -> None:
    _, _, _, ours, naive = servers
    mine = requests.get(ours + query, timeout=30)
    theirs = requests.get(naive + query, timeout=30)
    assert mine.status_code == theirs.status_code == 200
    assert mine.json() == theirs.json()


@pytest.mark.parametrize("query", [
    "metrics?limit=20&order=desc",
    "metrics?limit=20",
    "metrics?limit=5&order=asc&since_epoch=990",
    "metrics?limit=3&order=desc&keys=lr,train/loss",
    "metrics?limit=10000&order=desc&since_epoch=-1",
])
def test_both_servers_read_the_same_metrics(servers: Any, query: str) -> None:
    bench, _, _, ours, naive = servers
    path = f"/api/v1/runs/{bench.LONG_RUN}/{query}"
    mine, theirs = requests.get(ours + path, timeout=30).json(), requests.get(naive + path, timeout=30).json()
    assert mine == theirs and mine["rows"]


def test_the_index_timings_see_changed_runs(servers: Any, tmp_path: Path) -> None:
    bench = servers[0]
    runs = tmp_path / "runs"
    bench.generate_runs(runs, 12, 10)
    timings = bench.time_index(runs, changes=2, repeats=2)
    assert timings["runs_indexed"] == 12
    assert timings["refresh_unchanged_ms"] >= 0 and timings["refresh_one_changed_ms"] >= 0


def test_percentiles_are_measured_values() -> None:
    bench = load_bench()
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 50) == 50.0 and bench.percentile(values, 99) == 99.0
    assert bench.percentile([3.0], 99) == 3.0
