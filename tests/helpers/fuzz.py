"""Schemathesis driving an API from its own OpenAPI schema: every operation gets
generated requests (valid ones, and ones the schema forbids), and each answer must be no
5xx and match the schema the operation documents."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance


def fuzz(schema: Any, examples: int, headers: dict[str, str] | None = None, base_url: str | None = None) -> dict[str, int]:
    """Every operation of `schema` under Hypothesis (positive and negative examples, a
    fixed seed); the examples sent per operation, or AssertionError listing every
    operation that failed and how. (Schemathesis' pytest fixture loader predates
    pytest 9, so the strategies are driven here directly.)"""
    sent: dict[str, int] = {}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        sent[label] = 0
        try:
            fuzz_operation(operation, label, examples, sent, headers=headers, base_url=base_url)
        except Exception as exc:  # noqa: BLE001 - every operation's failure is collected, then reported together
            failures.append(f"{label}: {exc}")
    assert not failures, "\n\n".join(failures)
    return sent


def fuzz_operation(operation: Any, label: str, examples: int, sent: dict[str, int], **call: Any) -> None:
    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
           | operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def check(case: Any) -> None:
        sent[label] += 1
        case.call_and_validate(timeout=60, checks=[not_a_server_error, response_schema_conformance], **call)

    check()
