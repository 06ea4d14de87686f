"""The calibration section of a config: its bounds and its rules with the policy."""

from __future__ import annotations

import pytest

from calibration.config import CalibrationConfig
from ray_app.config import load_config
from ray_app.errors import ConfigError
from tests.helpers.configs import SMOKE


def test_calibration_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(SMOKE, ["calibration.risk_control.alpha=1.5", "calibration.risk_control.delta=0",
                            "calibration.guardrail.widths=[1.2]"])
    text = "\n".join(info.value.problems)
    assert "calibration.risk_control.alpha: Input should be less than 1" in text
    assert "calibration.risk_control.delta: Input should be greater than 0" in text
    assert "guardrail widths must lie in [0, 1)" in text
    with pytest.raises(ConfigError, match="calibration.policy is 'guardrail' but calibration.guardrail.enabled is false"):
        load_config(SMOKE, ["calibration.guardrail.enabled=false"])


def test_calibration_section_alone_refuses_bad_temperature_bounds() -> None:
    with pytest.raises(ValueError, match="min_temperature must be below max_temperature"):
        CalibrationConfig.model_validate({"temperature": {"min_temperature": 2.0, "max_temperature": 1.0}})
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        CalibrationConfig.model_validate({"temperature": {"enabled": True, "tempreature": 1.0}})
