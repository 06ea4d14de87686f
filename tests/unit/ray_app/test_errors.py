"""Each kind of user error carries its exit code and the HTTP status a client gets."""

from __future__ import annotations

import pytest

from ray_app import errors


@pytest.mark.parametrize(("kind", "status", "error"), [
    (errors.InvalidName, 400, "invalid name"),
    (errors.NotFound, 404, "not found"),
    (errors.TemplateNotFound, 404, "not found"),
    (errors.ExampleNotFound, 404, "not found"),
    (errors.Conflict, 409, "conflict"),
    (errors.TemplateExists, 409, "conflict"),
    (errors.NotReady, 409, "not ready"),
    (errors.InsightsNotReady, 409, "not ready"),
    (errors.InsightsError, 422, "invalid request"),
    (errors.DataError, 422, "invalid data"),
    (errors.InvalidRequest, 422, "invalid request"),
    (errors.Unavailable, 503, "unavailable"),
    (errors.UserError, 422, "invalid request"),
])
def test_each_user_error_has_its_status(kind: type[errors.UserError], status: int, error: str) -> None:
    raised = kind("why, and how to fix it")
    assert (raised.exit_code, raised.http_status, raised.http_error) == (2, status, error)


def test_a_config_error_lists_every_problem() -> None:
    raised = errors.ConfigError(["a: no", "b: no"], "c.yaml")
    assert (raised.http_status, raised.http_error) == (422, "invalid config")
    assert str(raised) == "2 problem(s) in c.yaml:\n  - a: no\n  - b: no" and raised.problems == ["a: no", "b: no"]


def test_a_split_contract_violation_is_a_bug_not_a_user_error() -> None:
    assert not issubclass(errors.SplitContractError, errors.UserError)
