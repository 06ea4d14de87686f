"""`ray-app sweep`: Ray Tune over training hyperparameters, one registry run per trial.

The space file (`space.py`) names config fields by dotted path and gives each a search
dimension; everything else comes from the run config, and every key and value is
checked against the config schema before Ray starts. The driver (`driver.py`) makes
the splits once, preprocesses train / val_select once and hands them to the trials;
each trial (`trial.py`) is a run of its own trained by the same code as `ray-app
train`, so `ray-app run best.yaml` goes straight on to calibration.
"""

from ray_app.sweep.driver import SweepLayout, SweepOutcome, TrialRow, run_sweep
from ray_app.sweep.space import Dimension, SweepConfig, check_space, load_sweep, sweep_name_pattern, sweepable_fields

__all__ = [
    "Dimension", "SweepConfig", "SweepLayout", "SweepOutcome", "TrialRow", "check_space", "load_sweep", "run_sweep",
    "sweep_name_pattern", "sweepable_fields",
]
