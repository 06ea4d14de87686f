"""Run insights: what a run's model learned and where it fails, as JSON-ready dicts.

The insights stage (`ray_app.stages.insights`, after evaluate) writes
`runs/<name>/insights/`; the functions here read it for a dashboard or an API, each a
plain function of a `Run`:

- `meaning_map(run, method="pca", params=None, seed=None, color=None, max_points=None)`
- `example(run, example_id, thumbnail_px=128)`
- `storyboard(run)`
- `saved_calibration_views(run)`
- `summary(run)`

Errors a caller can act on are `UserError` subclasses: `InsightsError` (bad method,
parameters or colour), `ExampleNotFound` (no such val_test example) and
`InsightsNotReady` (the run has not produced them yet; the message names the command).
"""

from __future__ import annotations

import json
from typing import Any

from ray_app.errors import ExampleNotFound, InsightsError, InsightsNotReady
from ray_app.insights.examples import example
from ray_app.insights.outcomes import Outcomes
from ray_app.insights.projection import meaning_map
from ray_app.runs import Run

__all__ = [
    "ExampleNotFound", "InsightsError", "InsightsNotReady",
    "example", "meaning_map", "saved_calibration_views", "storyboard", "summary",
]


def storyboard(run: Run) -> dict[str, Any]:
    """Real val_test examples per outcome (confident_right, confident_wrong, assist,
    abstain) and the most confused class pairs, as the insights stage chose them."""
    Outcomes.load(run)  # refuses insights older than the run's model
    return json.loads(run.insights.storyboard.read_text())


def summary(run: Run) -> dict[str, Any]:
    """What the insights stage recorded: counts, the default map's key, the reference
    model against the run's accuracy, timings."""
    path = run.insights.summary
    if not path.is_file():
        raise InsightsNotReady(f"run '{run.name}' has no insights yet ({path}); make them with: ray-app insights {run.name}")
    return json.loads(path.read_text())


def saved_calibration_views(run: Run) -> dict[str, Any]:
    """The calibration on val_calib as data to draw: reliability bins with their
    counts (before / after temperature), confidence per decision, the risk-coverage
    curve with the policy's operating point, the guardrail sweep's heat map."""
    path = run.calibration.views
    if not path.is_file():
        raise InsightsNotReady(
            f"run '{run.name}' has no calibration views ({path}); calibrate it (again): ray-app calibrate {run.name}"
        )
    return {"run": run.name, **json.loads(path.read_text())}
