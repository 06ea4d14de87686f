"""The control plane's API driven from its own OpenAPI schema by Schemathesis: requests
generated for every operation (valid ones and, by Schemathesis' negative mode, ones the
schema forbids) must never get a 5xx, and every answer must match the schema the
operation documents. The server is real (uvicorn on loopback) over synthetic runs and
without Ray, so launches end at 409, 422 or 503 and nothing trains."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis

from ray_app.control_plane.app import create_app
from tests.helpers.configs import SMOKE
from tests.helpers.fuzz import fuzz
from tests.helpers.runs import make_run
from tests.helpers.servers import running_server

# Examples per operation: about 30 operations, so under a thousand requests in all, bounded
# so the suite stays well under a minute on 2 cores.
EXAMPLES_PER_OPERATION = 30
TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def control_plane_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    runs = tmp_path_factory.mktemp("fuzz") / "runs"
    make_run(runs, "done_run", log="t [train] hello\n")
    make_run(runs, "failed_run", status="failed")
    app = create_app(runs_root=runs, ray_jobs=False, token=TOKEN, presets_root=SMOKE.parent)
    with running_server(app) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def test_no_generated_request_gets_a_server_error_or_an_undocumented_answer(control_plane_schema: Any) -> None:
    sent = fuzz(control_plane_schema, EXAMPLES_PER_OPERATION, headers={"Authorization": f"Bearer {TOKEN}"})
    print(f"control plane fuzz: {sum(sent.values())} requests over {len(sent)} operations")
    assert sum(sent.values()) >= 5 * len(sent)


def test_the_schema_covers_the_api(control_plane_schema: Any) -> None:
    """The fuzz reaches what matters: a schema that lost its routes would pass vacuously."""
    operations = {f"{op.method.upper()} {op.path}" for op in
                  (result.ok() for result in control_plane_schema.get_all_operations())}
    assert {"POST /api/v1/runs", "GET /api/v1/runs/{name}/metrics/stream", "POST /api/v1/configs/resolve",
            "POST /api/v1/templates", "GET /healthz"} <= operations
    assert len(operations) >= 30
