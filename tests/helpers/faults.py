"""Faults a test injects into the training loop through its `before_epoch` parameter."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import ray.cloudpickle

# Ray ships the hook to its workers by pickling it; by value, so a worker process need
# not import the tests package.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass(frozen=True)
class KillWorkersAt:
    """On the first attempt, every worker exits hard (no cleanup, like SIGKILL) at the
    start of `epoch`; a restarted group trains on. The wait lets the controller collect
    the previous epoch's report first: it polls workers every 2 s, and a report still
    queued in a dead worker is lost."""

    epoch: int

    def __call__(self, start: Any) -> None:
        if start.epoch == self.epoch and start.attempt == 0:
            time.sleep(5)
            os._exit(1)
