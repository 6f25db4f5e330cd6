"""Prefect's environment (seva_tasks/serve.py): every command works with or without `seva serve`.

The helper's decisions as unit tests (tiny HTTP servers stand in for Prefect's), then the real CLI:
a dead PREFECT_API_URL is one clear line, and `seva run --until sample` with no server running
completes on a temporary one.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import threading

import pytest

from conftest import free_port
from seva_tasks import serve
from seva_tasks.cli import main
from seva_tasks.config import ROOT
from seva_tasks.errors import SevaError

SEVA = ROOT / ".venv/bin/seva"


@pytest.fixture
def http_server():
    """Start a loopback HTTP server answering every GET with `status`; yield its port."""
    servers = []

    def start(status: int) -> int:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b'"ok"')

            def log_message(self, *args):
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv.server_address[1]

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _clean(**extra: str) -> dict[str, str]:
    """An environment with no Prefect settings, as in a fresh shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SEVA_PREFECT_"))}
    env.update(extra)
    return env


# ------------------------------------------------------------------------------ the helper's decisions
def test_no_server_means_a_temporary_one_with_project_defaults():
    env = serve.configured(_clean(), port=free_port())
    assert "PREFECT_API_URL" not in env  # Prefect starts a temporary server for the process
    assert env["PREFECT_HOME"] == str(ROOT / ".prefect")
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert int(env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 120


def test_explicit_settings_win_over_defaults(tmp_path):
    env = serve.configured(_clean(PREFECT_HOME=str(tmp_path), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="999"),
                           port=free_port())
    assert env["PREFECT_HOME"] == str(tmp_path)
    assert env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "999"


def test_an_empty_api_url_counts_as_unset():
    assert "PREFECT_API_URL" not in serve.configured(_clean(PREFECT_API_URL=" "), port=free_port())


def test_a_healthy_serve_on_the_port_is_used(http_server):
    port = http_server(200)
    assert serve.configured(_clean(), port=port)["PREFECT_API_URL"] == f"http://127.0.0.1:{port}/api"


def test_a_server_failing_its_health_check_is_not_used(http_server):
    assert "PREFECT_API_URL" not in serve.configured(_clean(), port=http_server(503))


def test_the_port_comes_from_seva_prefect_port(monkeypatch, http_server):
    port = http_server(200)
    monkeypatch.setenv("SEVA_PREFECT_PORT", str(port))
    assert serve.configured(_clean())["PREFECT_API_URL"] == serve.api_url(port)
    monkeypatch.setenv("SEVA_PREFECT_PORT", "42OO")
    with pytest.raises(SevaError, match="SEVA_PREFECT_PORT='42OO' is not a port number"):
        serve.configured(_clean())


def test_an_explicit_api_url_that_answers_wins_over_serve(http_server):
    served, mine = http_server(200), http_server(401)  # any HTTP answer counts: Cloud/proxies say 401
    url = f"http://127.0.0.1:{mine}/api"
    assert serve.configured(_clean(PREFECT_API_URL=url), port=served)["PREFECT_API_URL"] == url


@pytest.mark.parametrize("url_of", [lambda p: f"http://127.0.0.1:{p}/api", lambda p: "not a url"])
def test_an_explicit_api_url_that_does_not_answer_is_a_clear_error(url_of):
    port = free_port()
    url = url_of(port)
    with pytest.raises(SevaError) as err:
        serve.configured(_clean(PREFECT_API_URL=url))
    msg = str(err.value)
    assert url in msg and "unset PREFECT_API_URL" in msg and "\n" not in msg
    if "127.0.0.1" in url:
        assert f"`seva serve --background --port {port}`" in msg  # the command that would bring it up


def test_use_prefect_sets_this_process_up(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "environ", _clean(PREFECT_API_URL="", PREFECT_HOME=str(tmp_path)))
    assert serve.use_prefect(port=free_port()) is None
    assert "PREFECT_API_URL" not in os.environ
    assert os.environ["PREFECT_HOME"] == str(tmp_path) and os.environ["HF_HUB_OFFLINE"] == "1"


def test_child_environments(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFECT_API_URL", "http://example.invalid/api")
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "DEBUG")
    served = serve.prefect_env(4321, tmp_path)  # server, worker and the CLI talking to them
    assert served["PREFECT_API_URL"] == "http://127.0.0.1:4321/api"
    assert served["PREFECT_SERVER_API_HOST"] == "127.0.0.1" and served["PREFECT_HOME"] == str(tmp_path)
    temporary = serve.ephemeral_env(tmp_path, PREFECT_LOGGING_LEVEL="WARNING", SEVA_ROOT="/x")
    assert "PREFECT_API_URL" not in temporary  # never the user's server
    assert temporary["PREFECT_LOGGING_LEVEL"] == "WARNING" and temporary["SEVA_ROOT"] == "/x"
    assert temporary["PREFECT_HOME"] == str(tmp_path) and temporary["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


@pytest.mark.parametrize("raised", [
    "Failed to reach API at http://127.0.0.1:9/api/",
    "Flow run failed. Failed to reach API at http://127.0.0.1:9/api/.",  # prefect.utilities.engine's wording
])
def test_prefect_losing_its_server_becomes_one_line(monkeypatch, raised):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api/")
    with pytest.raises(SevaError, match=r"^PREFECT_API_URL is http://127\.0\.0\.1:9/api/, but no Prefect server"):
        with serve.prefect_errors():
            raise RuntimeError(raised)
    with pytest.raises(RuntimeError, match="something else"):  # other errors pass through untouched
        with serve.prefect_errors():
            raise RuntimeError("something else")


def test_cli_reports_a_dead_api_url_in_one_line(monkeypatch, capsys):
    url = f"http://127.0.0.1:{free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    for argv in (["run", "--until", "sample"], ["experiment"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ERROR: PREFECT_API_URL is " + url) and "\n" not in err


# ------------------------------------------------------------------------------ the real CLI
def test_seva_run_with_a_dead_api_url_fails_clearly(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/api"
    env = _clean(PREFECT_API_URL=url, PREFECT_HOME=str(tmp_path / "prefect"))
    out = subprocess.run([str(SEVA), "run", "--until", "sample", f"data_dir={tmp_path / 'data'}"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "seva serve" in lines[0], out.stderr
    assert not (tmp_path / "data").exists()  # failed before running anything


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_seva_run_until_sample_without_a_server(tmp_path):
    # No PREFECT_API_URL and nothing on the port seva looks at (SEVA_PREFECT_PORT: so a `seva serve`
    # someone runs on 4200 cannot take the run over): Prefect starts a temporary server.
    env = _clean(PREFECT_HOME=str(tmp_path / "prefect"), SEVA_PREFECT_PORT=str(free_port()), TQDM_DISABLE="1")
    data = tmp_path / "data"
    # pretrain=null: the toy preset's pretrain stage comes before sample (~3-4 CPU minutes) and
    # sample does not need it.
    out = subprocess.run([str(SEVA), "run", "--until", "sample", "pretrain=null", f"data_dir={data}"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    refs = json.loads(re.search(r"(?ms)^\{$.*", out.stdout).group(0))  # the CLI prints the refs last
    assert list(refs) == ["sample"]
    manifests = list((data / "artifacts/sample").glob("*/manifest.json"))
    assert [m.parent.name for m in manifests] == [refs["sample"]["key"]]
