"""Starting Ray's processes with the right environment, and picking ports."""

from __future__ import annotations

import os
import socket

import pytest

from ray_app.errors import UserError
from ray_app.ray_runtime import (
    HAPROXY_PORT_VARIABLES,
    SERVE_ENVIRONMENT,
    check_port_free,
    environment,
    free_port,
    serve_environment,
)


def test_serve_environment_is_set_while_ray_starts_then_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*SERVE_ENVIRONMENT, *HAPROXY_PORT_VARIABLES]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", "0")  # a user's choice wins
    with serve_environment() as applied:
        assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1" == applied["RAY_SERVE_ENABLE_HA_PROXY"]
        assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0"
        ports = [int(os.environ[name]) for name in HAPROXY_PORT_VARIABLES]
        assert len(set(ports)) == 2 and 8404 not in ports and 9101 not in ports
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in os.environ
    assert not any(name in os.environ for name in HAPROXY_PORT_VARIABLES)
    assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "0"


def test_environment_restores_what_was_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_APP_TEST_KEEP", "mine")
    monkeypatch.delenv("RAY_APP_TEST_NEW", raising=False)
    with environment({"RAY_APP_TEST_KEEP": "theirs", "RAY_APP_TEST_NEW": "x"}, keep_existing=False) as applied:
        assert applied == {"RAY_APP_TEST_KEEP": "theirs", "RAY_APP_TEST_NEW": "x"}
        assert os.environ["RAY_APP_TEST_KEEP"] == "theirs"
    assert os.environ["RAY_APP_TEST_KEEP"] == "mine" and "RAY_APP_TEST_NEW" not in os.environ
    with pytest.raises(RuntimeError), environment({"RAY_APP_TEST_NEW": "y"}):
        raise RuntimeError("a failed start restores it too")
    assert "RAY_APP_TEST_NEW" not in os.environ


def test_a_taken_port_is_a_user_error_naming_it() -> None:
    port = free_port()
    check_port_free("127.0.0.1", port)  # free: no error
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}.*choose another with --port"):
            check_port_free("127.0.0.1", port)
