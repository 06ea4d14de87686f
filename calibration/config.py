"""Typed configuration of the calibration stage (composed into ray_app's AppConfig)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from trainers.schema import StrictModel

PolicyRule = Literal["none", "threshold", "guardrail", "risk_control"]


class TemperatureConfig(StrictModel):
    enabled: bool = Field(default=True, description="Fit a temperature T on val_calib (else T = 1).")
    min_temperature: float = Field(default=0.05, gt=0.0, description="Lower bound of the search over T.")
    max_temperature: float = Field(default=20.0, gt=0.0, description="Upper bound of the search over T.")
    min_samples: int = Field(
        default=50, ge=2, description="Refuse to fit T on fewer val_calib samples than this."
    )

    @model_validator(mode="after")
    def _bounds(self) -> TemperatureConfig:
        if self.min_temperature >= self.max_temperature:
            raise ValueError("min_temperature must be below max_temperature")
        return self


class ThresholdConfig(StrictModel):
    enabled: bool = Field(default=True, description="Sweep a confidence threshold tau.")
    objective: Literal["macro_f1_accepted", "accuracy_at_coverage"] = Field(
        default="macro_f1_accepted",
        description="What tau maximises among thresholds keeping coverage >= min_coverage: "
        "macro-F1 of the accepted samples, or their accuracy.",
    )
    min_coverage: float = Field(
        default=0.8, gt=0.0, le=1.0, description="Smallest share of samples tau must accept."
    )
    num_candidates: int = Field(
        default=200, ge=2, description="Candidate thresholds (quantiles of calibrated confidence)."
    )


class GuardrailConfig(StrictModel):
    enabled: bool = Field(default=True, description="Sweep an accept / assist / abstain band with Ray Tune.")
    center_mode: Literal["fixed", "auto"] = Field(
        default="auto",
        description="auto: Tune searches the center c and the width w; fixed: c = center, "
        "Tune searches w only.",
    )
    center: float = Field(default=0.7, gt=0.0, lt=1.0, description="Band center c when center_mode is fixed.")
    centers: list[float] = Field(
        default=[0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95],
        min_length=1,
        description="Centers Tune tries (center_mode auto).",
    )
    widths: list[float] = Field(
        default=[0.0, 0.05, 0.1, 0.2, 0.3],
        min_length=1,
        description="Band widths Tune tries. Confidence >= c + w/2 accepts, inside the band assists, below abstains.",
    )
    max_assist_rate: float = Field(
        default=0.2, ge=0.0, le=1.0, description="Most samples the band may send to a person."
    )
    min_coverage: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Fewest samples the band must accept."
    )
    max_concurrent_trials: int = Field(default=2, ge=1, description="Tune trials run at once.")

    @model_validator(mode="after")
    def _grid_in_range(self) -> GuardrailConfig:
        if any(not 0.0 < c < 1.0 for c in self.centers):
            raise ValueError("guardrail centers must lie in (0, 1)")
        if any(not 0.0 <= w < 1.0 for w in self.widths):
            raise ValueError("guardrail widths must lie in [0, 1)")
        return self


class RiskControlConfig(StrictModel):
    enabled: bool = Field(default=True, description="Certify a threshold by Learn-then-Test.")
    alpha: float = Field(
        default=0.1, gt=0.0, lt=1.0, description="Largest selective error (errors among accepted) allowed."
    )
    delta: float = Field(
        default=0.1, gt=0.0, lt=1.0, description="Allowed probability that the guarantee fails."
    )
    min_accepted: int = Field(
        default=50,
        ge=1,
        description="Candidates accepting fewer val_calib samples are skipped: testing stops "
        "at the first candidate it cannot certify, and tiny accepted sets have no power.",
    )
    num_candidates: int = Field(default=200, ge=2, description="Candidate thresholds tested.")


class CalibrationConfig(StrictModel):
    temperature: TemperatureConfig = Field(default_factory=TemperatureConfig, description="Temperature scaling.")
    threshold: ThresholdConfig = Field(default_factory=ThresholdConfig, description="Threshold sweep.")
    guardrail: GuardrailConfig = Field(default_factory=GuardrailConfig, description="Uncertainty band.")
    risk_control: RiskControlConfig = Field(default_factory=RiskControlConfig, description="Risk control.")
    policy: PolicyRule = Field(
        default="guardrail",
        description="The decision rule the bundle carries: none (always accept), threshold, "
        "guardrail or risk_control. It must be a rule that is enabled.",
    )
    ece_bins: int = Field(default=15, ge=2, description="Equal-width bins of top-label ECE / MCE.")

    @model_validator(mode="after")
    def _policy_rule_is_fitted(self) -> CalibrationConfig:
        if self.policy != "none" and not getattr(self, self.policy).enabled:
            raise ValueError(
                f"calibration.policy is '{self.policy}' but calibration.{self.policy}.enabled "
                "is false: enable it or choose another policy"
            )
        return self
