"""What the run insights add to a run's wall time.

Runs `ray-app run CONFIG` as a user would, each run in its own process and runs root
(so nothing is cached between them, the compute budget included): once with
`insights.enabled=false`, once with the insights on; with --repeats N, N such pairs,
the order alternating (off/on, on/off, ...) so a drift of the machine's load does not
always fall on the same side. Reports both wall times, the insights stage's own
timings from the run's metadata (the meaning map's projection and plot, the storyboard
and its plot, the reference model, the report), and the compute budget's time inside
the train stage.

The stage's own timings are the reliable number on a shared machine: the difference of
two whole runs also holds every other process's load on the cores, which on a 2-core
machine moves a 3-minute run by more than the whole insights stage takes. The share
that matters is the meaning map (PCA) and the storyboard, with their plots, against
the wall time of the run without insights: what they add to it.

The val_test features the map projects are exported by the train stage in the same
inference pass as the logits, with insights on or off, so both runs carry that cost.

    python bench/insights_overhead.py                       # configs/digits.yaml, 1 pair
    python bench/insights_overhead.py --repeats 2 --output bench/results/insights_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# the parts of the insights stage that the meaning map (PCA) and the storyboard cost
MAP_AND_STORYBOARD = ("outcomes", "meaning_map", "meaning_map_png", "storyboard", "storyboard_png")


def machine() -> dict[str, Any]:
    memory_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:"))
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_kib / 2**20, 1),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "ray": version("ray"),
        "scikit-learn": version("scikit-learn"),
        "gpu": False,
    }


def one_run(config: str, root: Path, insights: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "ray_app", "run", config, "-o", f"storage.root={root}",
               "-o", f"insights.enabled={'true' if insights else 'false'}"]
    load_before = os.getloadavg()
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - started
    load_after = os.getloadavg()
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    metadata = json.loads(next(root.glob("*/metadata.json")).read_text())
    stages = metadata["stages"]
    timings = stages["insights"].get("timings")
    return {
        "insights": insights,
        "wall_seconds": round(wall, 2),
        # 1-minute load average before and after the run (2 cores: above 2 means other
        # work was waiting for a core too)
        "load_average_1min_before": round(load_before[0], 2),
        "load_average_1min_after": round(load_after[0], 2),
        "load_average_5min_after": round(load_after[1], 2),
        "stage_seconds": {name: info.get("seconds") for name, info in stages.items()},
        "insights_timings": timings,
        "map_and_storyboard_seconds": None if timings is None else round(sum(timings[k] for k in MAP_AND_STORYBOARD), 4),
        "budget_seconds": stages["train"].get("budget", {}).get("seconds"),
        "epochs_run": stages["train"].get("epochs_run"),
        "epoch_seconds": stages["train"].get("epoch_seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/digits.yaml")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs (off/on, then on/off, ...)")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "insights_overhead.json")
    args = parser.parse_args()
    started = time.monotonic()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.repeats):
            for insights in ((False, True) if pair % 2 == 0 else (True, False)):
                root = Path(tmp) / f"pair{pair}_{'on' if insights else 'off'}"
                runs.append(one_run(args.config, root, insights))
                print(json.dumps(runs[-1]), flush=True)
    on = [r for r in runs if r["insights"]]
    off = [r for r in runs if not r["insights"]]
    wall_off = statistics.median(r["wall_seconds"] for r in off)
    wall_on = statistics.median(r["wall_seconds"] for r in on)
    map_and_story = statistics.median(r["map_and_storyboard_seconds"] for r in on)
    stage = statistics.median(r["stage_seconds"]["insights"] for r in on)
    report = {
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": args.config,
        "machine": machine(),
        "bench_seconds": round(time.monotonic() - started, 1),
        "runs": runs,
        "wall_off_median": wall_off,
        "wall_on_median": wall_on,
        # noisy on a shared machine: whole runs differ by what else ran meanwhile
        "wall_difference_on_minus_off": round(wall_on - wall_off, 2),
        "map_and_storyboard_seconds_median": map_and_story,
        "insights_stage_seconds_median": stage,
        # what the map and the storyboard add to the run without insights
        "map_and_storyboard_share_of_wall_off": round(map_and_story / wall_off, 5),
        "insights_stage_share_of_wall_off": round(stage / wall_off, 5),
        "target_share": 0.05,
        "met": map_and_story / wall_off < 0.05,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
