"""One trial of a sweep: a Tune function that resolves its config, adopts the sweep's
shared splits into a run of its own, and trains it with the same `run_training` as
`ray-app train`. Every epoch reaches Tune through `TuneReportCallback`, so ASHA can stop
a trial between epochs; a trial that finishes is a complete trained run."""

from __future__ import annotations

import json
import logging
import os
import traceback
from pathlib import Path
from typing import Any

import ray.train
from filelock import FileLock
from ray import tune

from ray_app.config import validate_config
from ray_app.sweep.space import trial_config


class EpochsToRunLog(ray.train.UserCallback):
    """Each reported epoch as one line in the trial run's log. Ray Train calls it on its
    controller, wherever that runs: the run directory is shared storage, so the line
    lands next to the run's metrics."""

    def __init__(self, log_file: str, epochs: int) -> None:
        self.log_file, self.epochs = log_file, epochs

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        from ray_app.progress import epoch_line
        from ray_app.runlog import LogSink

        if metrics and "train/loss" in metrics[0]:
            sink = LogSink(Path(self.log_file))
            sink.write(epoch_line(metrics[0], self.epochs).strip(), stage="train")
            sink.close()


def sweep_trial(
    values: dict[str, Any],
    base_raw: dict[str, Any],
    name_pattern: str,
    splits_dir: str,
    prepared: dict[str, Any],
    working_dir: str,
    lock_dir: str,
) -> None:
    """One Tune trial: a registry run trained by the same code as `ray-app train`."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from ray_app.runlog import END_MARK, START_MARK, LogSink, SinkHandler
    from ray_app.splits import SplitReader
    from ray_app.stages import TRAIN
    from ray_app.stages.context import StageContext
    from ray_app.stages.splits import adopt_splits
    from ray_app.stages.train import run_training

    # Tune starts a trial in its own trial directory; relative paths in the config
    # (storage root, tokenizer, a local backbone) mean where `ray-app sweep` ran.
    if Path(working_dir).is_dir():
        os.chdir(working_dir)
    ctx = StageContext.for_config(validate_config(trial_config(base_raw, values, name_pattern), "sweep trial"))
    cfg, run = ctx.cfg, ctx.run
    # The trial's own records (its Ray Train driver, errors) go to its run's log; its
    # workers' output reaches the sweep's log through Ray's forwarding to the driver.
    sink = LogSink(run.log_path, ready=run.exists)
    sink.stage = "train"
    handler = SinkHandler(sink)
    logging.getLogger().addHandler(handler)
    sink.write(f"{START_MARK}: sweep trial {values} · pid {os.getpid()} ====", stage="-")
    try:
        # Two trials can resolve to one config (a grid repeated by num_samples): the second
        # waits for the first and reports its finished history instead of training again.
        with FileLock(str(Path(lock_dir) / f"{run.name}.lock")):
            if run.stage_complete(TRAIN.name, TRAIN.fingerprint(cfg)):
                for line in run.train.metrics.read_text().splitlines():
                    tune.report({**json.loads(line), "cached": True})
                return
            ctx.splits = adopt_splits(cfg, run, SplitReader(Path(splits_dir)))
            sink.write(f"the sweep's shared splits: {splits_dir}", stage="splits")  # the run exists: log from here on
            # The log line first: once Tune has the report, ASHA may end the trial at once.
            epochs_logged = EpochsToRunLog(str(run.log_path.resolve()), cfg.training.epochs)
            run_training(ctx, prepared=prepared, callbacks=[epochs_logged, TuneReportCallback()])
    except BaseException as exc:
        sink.write("".join(traceback.format_exception(exc)).rstrip(), stage="error")
        sink.write(f"{END_MARK}: {type(exc).__name__} ====", stage="-")
        raise
    else:
        sink.write(f"{END_MARK}: trial done ====", stage="-")
    finally:
        logging.getLogger().removeHandler(handler)
        sink.close()
