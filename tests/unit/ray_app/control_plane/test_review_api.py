"""The review queue over HTTP, without Ray: list, show, label, skip, undo and export the
answers a real decision recorder wrote, every refusal a JSON 4xx, and a rerun whose
overrides add the export to data.reviewed (resolved and validated; no job server here)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import requests
import yaml
from PIL import Image

from ray_app.control_plane.app import create_app
from ray_app.control_plane.service import ControlPlane
from ray_app.control_plane.settings import ServerSettings
from ray_app.review import exports_directory, item_id
from tests.helpers.review import VERSION, Answered, digit_pixels, digits_run, record
from tests.helpers.servers import running_server

API = "/api/v1/runs/digits_run/review"


@pytest.fixture
def server(tmp_path: Path) -> Any:
    runs = tmp_path / "runs"
    digits_run(runs)
    record(runs, "digits_run", [
        Answered("client-id/../x", 0, 0.52, "assist", "3", digit_pixels(0)),  # a request id a client chose
        Answered("r2", 0, 0.44, "assist", "5", digit_pixels(1)),
        Answered("r3", 0, 0.21, "abstain", "8", digit_pixels(2)),
    ])
    with running_server(create_app(runs_root=runs, ray_jobs=False)) as url:
        yield url, runs


def check(response: requests.Response, status: int, error: str, *fragments: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    for fragment in fragments:
        assert fragment in str(body["detail"]), (fragment, body)
    return body


def test_list_show_label_undo_and_export(server: Any) -> None:
    url, _ = server
    page = requests.get(f"{url}{API}").json()
    assert page["run"] == "digits_run" and page["label_names"] == [str(d) for d in range(10)]
    assert page["counts"] == {"pending": 2, "labelled": 0, "skipped": 0}
    assert [i["confidence"] for i in page["items"]] == [0.44, 0.52]
    client_item = item_id(VERSION, "client-id/../x", 0)
    assert page["items"][1]["id"] == client_item and "client-id" not in str(page)  # never raw in a URL or body
    both = requests.get(f"{url}{API}", params={"decisions": "assist,abstain", "status": "all"}).json()
    assert [i["decision"] for i in both["items"]] == ["abstain", "assist", "assist"]

    detail = requests.get(f"{url}{API}/items/{client_item}", params={"thumbnail_px": 32}).json()
    assert detail["prediction"] == "3" and detail["input"]["kind"] == "image"
    with Image.open(io.BytesIO(base64.b64decode(detail["input"]["image"]))) as image:
        assert image.format == "PNG" and image.size == (32, 32)

    stored = requests.put(f"{url}{API}/items/{client_item}", json={"label": "3", "reviewer": "ana"})
    assert stored.status_code == 200 and stored.json()["label"] == "3" and stored.json()["reviewer"] == "ana"
    again = check(requests.put(f"{url}{API}/items/{client_item}", json={"label": "2"}), 409, "already reviewed",
                  "already labelled '3' by ana", "undo it first")
    assert again["reviewer"] == "ana"
    labelled = requests.get(f"{url}{API}", params={"status": "labelled"}).json()
    assert [i["review"]["label"] for i in labelled["items"]] == ["3"] and labelled["counts"]["labelled"] == 1

    assert requests.delete(f"{url}{API}/items/{client_item}").status_code == 204
    check(requests.delete(f"{url}{API}/items/{client_item}"), 404, "not found", "no review to undo")
    check(requests.post(f"{url}{API}/export"), 409, "nothing to export")
    requests.put(f"{url}{API}/items/{client_item}", json={"label": "3"}).raise_for_status()
    skipped = page["items"][0]["id"]
    assert requests.put(f"{url}{API}/items/{skipped}", json={"skip": True}).json()["skipped"] is True

    exported = requests.post(f"{url}{API}/export")
    assert exported.status_code == 201, exported.text
    body = exported.json()
    assert body["rows"] == 1 and body["label_counts"] == {"3": 1} and len(body["fingerprint"]) == 64
    assert pq.read_table(body["path"]).column_names == ["image", "label"]


def test_bad_requests_get_a_specific_4xx(server: Any) -> None:
    url, _ = server
    item = requests.get(f"{url}{API}").json()["items"][0]["id"]
    check(requests.put(f"{url}{API}/items/{item}", json={"label": "eleven"}), 422, "invalid label",
          "'eleven' is not a class", "'9'")
    check(requests.put(f"{url}{API}/items/{item}", json={"label": "1", "skip": True}), 422, "invalid request",
          "either a label or skip")
    check(requests.put(f"{url}{API}/items/{item}", json={}), 422, "invalid request")
    check(requests.put(f"{url}{API}/items/0123456789abcdef", json={"label": "1"}), 404, "not found",
          "no review item '0123456789abcdef'")
    check(requests.get(f"{url}{API}/items/0123456789abcdef"), 404, "not found")
    check(requests.get(f"{url}{API}", params={"decisions": "accepted"}), 422, "invalid request")
    check(requests.get(f"{url}{API}", params={"decisions": "assist,assist,abstain,accept"}), 422, "invalid request")
    check(requests.get(f"{url}{API}", params={"status": "done"}), 422, "invalid request")
    check(requests.get(f"{url}/api/v1/runs/no_such_run/review"), 404, "not found", "no run named 'no_such_run'")


def test_a_rerun_takes_the_export_as_data_reviewed(server: Any, tmp_path: Path) -> None:
    url, runs = server
    item = requests.get(f"{url}{API}").json()["items"][0]["id"]
    requests.put(f"{url}{API}/items/{item}", json={"label": "5"}).raise_for_status()
    path = requests.post(f"{url}{API}/export").json()["path"]
    plane = ControlPlane(ServerSettings(runs_root=runs, ray_jobs=False))
    raw = yaml.safe_load((runs / "digits_run" / "config.yaml").read_text())
    cfg = plane.resolve_config(raw, [f'data.reviewed=["{path}"]'])
    assert cfg.data.reviewed == [path]
    # Through the route: validated, then refused only for want of a job server.
    check(requests.post(f"{url}/api/v1/runs/digits_run/rerun",
                        json={"overrides": [f'data.reviewed=["{path}"]'], "on_exists": "new"}), 503, "unavailable")
    check(requests.post(f"{url}/api/v1/runs/digits_run/rerun",
                        json={"overrides": [f'data.reviewed=["{tmp_path}/gone.parquet"]'], "on_exists": "new"}),
          422, "invalid data", "no such review export")
    # Asking the server to export the labels for the rerun (one more than exported): refused
    # before an export is written.
    second = requests.get(f"{url}{API}").json()["items"][0]["id"]
    requests.put(f"{url}{API}/items/{second}", json={"label": "8"}).raise_for_status()
    exports = sorted(exports_directory(runs, "digits_run").glob("*"))
    check(requests.post(f"{url}/api/v1/runs/digits_run/rerun", json={"with_reviewed": True, "on_exists": "new"}),
          503, "unavailable")
    assert sorted(exports_directory(runs, "digits_run").glob("*")) == exports
