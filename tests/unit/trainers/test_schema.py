"""The strict base of every config section and how a validation error reads."""

from __future__ import annotations

import pytest
from pydantic import Field, ValidationError, model_validator

from trainers.schema import CrossFieldProblems, StrictModel, describe_error, validation_problems


class Inner(StrictModel):
    rank: int = Field(default=1, gt=0, description="A positive number.")


class Outer(StrictModel):
    learning_rate: float = Field(default=0.1, description="A rate.")
    inner: Inner | None = Field(default=None, description="An optional section.")

    @model_validator(mode="after")
    def _rules(self) -> "Outer":
        problems = []
        if self.learning_rate > 1:
            problems.append("learning_rate above 1 diverges")
        if self.inner is not None and self.inner.rank > 8 and self.learning_rate > 0.5:
            problems.append("a large rank needs a smaller learning_rate")
        if problems:
            raise CrossFieldProblems(problems)
        return self


def problems_of(raw: dict) -> list[str]:
    with pytest.raises(ValidationError) as info:
        Outer.model_validate(raw)
    return validation_problems(info.value, Outer)


def test_unknown_keys_are_errors_with_the_closest_known_key() -> None:
    assert problems_of({"learning_rat": 0.1}) == ["learning_rat: unknown key; did you mean 'learning_rate'?"]
    assert problems_of({"inner": {"rnak": 2}}) == ["inner.rnak: unknown key; did you mean 'rank'?"]
    assert problems_of({"zzz": 1}) == ["zzz: unknown key; known keys: inner, learning_rate"]


def test_values_are_echoed_but_not_whole_sections() -> None:
    assert problems_of({"inner": {"rank": 0}}) == ["inner.rank: Input should be greater than 0 (got 0)"]
    assert problems_of({"inner": "x"})[0].startswith("inner: Input should be a valid dictionary")
    assert problems_of({"inner": {"rank": "many"}, "learning_rate": "fast"}) == [
        "learning_rate: Input should be a valid number, unable to parse string as a number (got 'fast')",
        "inner.rank: Input should be a valid integer, unable to parse string as an integer (got 'many')",
    ]


def test_cross_field_rules_are_reported_one_by_one() -> None:
    assert problems_of({"learning_rate": 2.0, "inner": {"rank": 16}}) == [
        "learning_rate above 1 diverges", "a large rank needs a smaller learning_rate",
    ]


def test_assignments_are_validated_like_the_value_they_replace() -> None:
    section = Inner()
    with pytest.raises(ValidationError):
        section.rank = -1
    assert section.rank == 1


def test_a_top_level_error_can_be_named() -> None:
    error = {"type": "value_error", "loc": (), "msg": "Value error, broken", "input": 3}
    assert describe_error(error) == "(top level): broken (got 3)"
    assert describe_error(error, top_level="params") == "params: broken (got 3)"
    assert describe_error(error, top_level="") == "broken (got 3)"
