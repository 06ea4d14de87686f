"""The base of every config schema, and how a validation error reads.

Every section of a config (and every settings model built like one) derives from
`StrictModel`, so an unknown key is an error instead of a setting silently ignored.
`validation_problems` turns a pydantic `ValidationError` into one sentence per problem,
`dotted.path: what is wrong (got value)`, with a "did you mean" for a misspelt key:
the config loader, the templates, the sweep space, the model families, the meaning
map's parameters and both HTTP APIs report problems the same way.

It lives in the lowest package because `trainers`, `calibration`, `serve` and
`ray_app` all define config sections, and none of the first three may import ray_app.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored,
    and an assignment is validated like the value it replaces."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CrossFieldProblems(ValueError):
    """Raised by a model validator with every broken rule between fields at once; the
    problems are reported one by one, not as one joined sentence."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def error_location(error: Any) -> str:
    """The dotted path of one pydantic error (`training.peft.r`); empty at the top."""
    return ".".join(str(part) for part in error["loc"])


def error_message(error: Any) -> str:
    """Pydantic's message without the `Value error, ` a validator's ValueError gets."""
    return str(error["msg"]).removeprefix("Value error, ")


def describe_error(error: Any, root: type[BaseModel] | None = None, top_level: str = "(top level)") -> str:
    """One error as `where: what (got value)`. An unknown key of `root` gets the
    closest known key, or the list of known keys; a missing value or a whole section
    is not echoed back."""
    where = error_location(error) or top_level
    if error["type"] == "extra_forbidden" and root is not None:
        known = known_fields(list(error["loc"][:-1]), root)
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
        return f"{where}: unknown key{hint}"
    given = error.get("input")
    shown = "" if isinstance(given, dict) or error["type"] == "missing" or "input" not in error else f" (got {given!r})"
    return f"{where}: {error_message(error)}{shown}" if where else f"{error_message(error)}{shown}"


def validation_problems(
    exc: ValidationError, root: type[BaseModel] | None = None, top_level: str = "(top level)"
) -> list[str]:
    """Every problem of `exc`, one sentence each; a validator's `CrossFieldProblems`
    contributes each of its problems."""
    return list(_problems(exc.errors(), root, top_level))


def _problems(errors: Iterable[Any], root: type[BaseModel] | None, top_level: str) -> Iterable[str]:
    for error in errors:
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, CrossFieldProblems):
            yield from cause.problems
        else:
            yield describe_error(error, root, top_level)


def known_fields(path: list[Any], root: type[BaseModel]) -> list[str]:
    """The field names of the section at `path` under `root` (empty when the path
    does not lead to a section)."""
    model: Any = root
    for part in path:
        field = getattr(model, "model_fields", {}).get(str(part))
        if field is None:
            return []
        # An optional section (`PeftConfig | None`): its keys are the model's.
        members = get_args(field.annotation) or (field.annotation,)
        model = next((m for m in members if hasattr(m, "model_fields")), field.annotation)
    return sorted(getattr(model, "model_fields", {}))
