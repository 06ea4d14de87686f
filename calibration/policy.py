"""The policy a bundle carries: a temperature and one decision rule.

`Policy.decide` is the single definition of accept / assist / abstain used by
evaluation now and by serving later.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from calibration.guardrail import ABSTAIN, ACCEPT, guardrail_decisions
from calibration.metrics import probabilities
from trainers.schema import StrictModel

POLICY_VERSION = 1


class Policy(StrictModel):

    version: int = Field(default=POLICY_VERSION, description="Policy file format version.")
    temperature: float = Field(default=1.0, gt=0.0, description="Divide logits by this before softmax.")
    rule: Literal["none", "threshold", "guardrail", "risk_control"] = Field(
        default="none", description="Decision rule on calibrated top-label confidence."
    )
    threshold: float | None = Field(
        default=None, ge=0.0, le=1.0, description="threshold / risk_control: accept at confidence >= threshold."
    )
    center: float | None = Field(default=None, description="guardrail: band center.")
    width: float | None = Field(default=None, ge=0.0, description="guardrail: band width.")
    alpha: float | None = Field(default=None, description="risk_control: certified selective-error bound.")
    delta: float | None = Field(default=None, description="risk_control: allowed failure probability.")

    @model_validator(mode="after")
    def _parameters_for_rule(self) -> Policy:
        if self.rule in ("threshold", "risk_control") and self.threshold is None:
            raise ValueError(f"rule {self.rule} needs a threshold")
        if self.rule == "guardrail" and (self.center is None or self.width is None):
            raise ValueError("rule guardrail needs center and width")
        return self

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        return probabilities(logits, self.temperature)

    def decide(self, confidence: np.ndarray) -> np.ndarray:
        confidence = np.asarray(confidence)
        if self.rule == "none":
            return np.full(confidence.shape, ACCEPT, dtype=object)
        if self.rule == "guardrail":
            assert self.center is not None and self.width is not None
            return guardrail_decisions(confidence, self.center, self.width).astype(object)
        return np.where(confidence >= self.threshold, ACCEPT, ABSTAIN).astype(object)
