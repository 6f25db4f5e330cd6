"""Fixtures shared by the tests that start real servers on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest

from seva_tasks import serve


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real local Prefect server + worker (seva serve) on a free port with its own home: (port, home)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    serve.start(port, home)
    yield port, home
    serve.stop(home)
