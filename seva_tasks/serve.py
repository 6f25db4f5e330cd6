"""Prefect for seva: one place that sets up its environment, and the local server (DESIGN §3).

Every entry point (the CLI, bench scripts, tests) calls this module instead of setting PREFECT_*
by hand:

- `use_prefect()` sets up this process (before Prefect is imported): state in `.prefect/` inside the
  project, analytics off, the hub offline, and the API: the user's PREFECT_API_URL if set (checked:
  a dead one is a one-line SevaError, never Prefect's traceback), else a `seva serve` answering on
  127.0.0.1:<port>, else none, and Prefect starts a temporary server for this process.
- `prefect_env(port, home)`: environment of a child that is or talks to the server on <port>.
- `ephemeral_env(home)`: environment of a child on a temporary server with its own state.

`seva serve` = `prefect server start` (127.0.0.1 only) → `prefect work-pool create seva-local --type
process` → `prefect deploy --all` → `prefect worker start`. prefect.yaml stays the one definition of
the deployments; nothing here redefines them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from seva_tasks.config import ROOT
from seva_tasks.errors import SevaError

POOL = "seva-local"
DEFAULT_PORT = 4200
# Startup of a temporary server: it migrates a fresh database first, far slower than Prefect's 20 s
# default allows on a busy 2-core machine.
EPHEMERAL_TIMEOUT_S = "300"


def default_port() -> int:
    """Where `seva serve` listens unless told otherwise: SEVA_PREFECT_PORT (the Makefile's PORT), else 4200."""
    raw = os.environ.get("SEVA_PREFECT_PORT", "").strip()
    if not raw:
        return DEFAULT_PORT
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise SevaError(f"SEVA_PREFECT_PORT={raw!r} is not a port number; set it to e.g. 4200, or unset it.")
    return int(raw)


def api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def defaults(home: Path | None = None) -> dict[str, str]:
    """What every Prefect process of seva shares: project-local state, loopback, no telemetry, no hub."""
    return {
        "PREFECT_HOME": str(home or ROOT / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": EPHEMERAL_TIMEOUT_S,
        # the stages log with `logging` (they know nothing of Prefect): their lines join the run's log, terminal and UI
        "PREFECT_LOGGING_EXTRA_LOGGERS": "seva_tasks",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",  # a stage run outside a flow (tests, `seva inspect`)
        "HF_HUB_OFFLINE": "1",
    }


def prefect_env(port: int = DEFAULT_PORT, home: Path | None = None) -> dict[str, str]:
    """Environment for a child that is, or talks to, the server on 127.0.0.1:<port> (server, worker, CLI)."""
    env = dict(os.environ)
    env.update(defaults(home))
    env.update(
        PREFECT_API_URL=api_url(port),
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_UI_URL=f"http://127.0.0.1:{port}",
        SEVA_ROOT=str(ROOT),  # prefect.yaml's pull step: the worker's flow runs start here
    )
    return env


def ephemeral_env(home: Path, base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """Environment for a child on a temporary Prefect server with its own state in `home`.

    Every PREFECT_* of `base` (default: this process's environment) is dropped, so neither the
    user's server nor their settings leak into a test or benchmark; `extra` is applied last.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("PREFECT_")}
    env.update(defaults(home))
    env.update(extra)
    return env


def _open(url: str, timeout: float):
    # Loopback never goes through a proxy (http_proxy without no_proxy would swallow it); other
    # hosts (a remote server, Prefect Cloud) use the environment's proxies, as Prefect's client does.
    host = urllib.parse.urlsplit(url).hostname or ""
    handlers = [urllib.request.ProxyHandler({})] if host in ("127.0.0.1", "localhost", "::1") else []
    return urllib.request.build_opener(*handlers).open(url, timeout=timeout)


def healthy(port: int) -> bool:
    """A Prefect server answers its health check on 127.0.0.1:<port>."""
    try:
        with _open(f"{api_url(port)}/health", timeout=2) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


def answers(url: str, timeout: float = 5) -> bool:
    """Something answers HTTP at this API URL. Any status counts: Cloud or an auth proxy may say 401."""
    try:
        with _open(url.rstrip("/") + "/health", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # refused, timed out, no such host, malformed URL
        return False


def _start_hint(url: str) -> str:
    """How to bring up a server at this URL: `seva serve` if it is a local one."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "Check the URL"
    if host not in ("127.0.0.1", "localhost"):
        return "Check that server"
    if port and port != DEFAULT_PORT:
        return f"Start it with `seva serve --background --port {port}`"
    return "Start it with `seva serve --background` (or `make run`)"


def unreachable(url: str, in_profile: bool = False) -> SevaError:
    where, unset = (("Prefect's API URL (your Prefect profile)", "`prefect config unset PREFECT_API_URL`") if in_profile
                    else ("PREFECT_API_URL", "`unset PREFECT_API_URL`"))
    return SevaError(f"{where} is {url}, but no Prefect server answers there. {_start_hint(url)}, "
                     f"or run {unset} to use a temporary server.")


def choose_api(environ: Mapping[str, str], port: int) -> str | None:
    """The API URL a seva command uses; None: Prefect starts a temporary server for the process.

    An explicit PREFECT_API_URL wins, but only if it answers (else SevaError naming it); otherwise a
    healthy `seva serve` on 127.0.0.1:<port>, so its UI shows the run; otherwise None.
    """
    explicit = environ.get("PREFECT_API_URL", "").strip()
    if explicit:
        if not answers(explicit):
            raise unreachable(explicit)
        return explicit
    return api_url(port) if healthy(port) else None


def configured(environ: Mapping[str, str] | None = None, port: int | None = None) -> dict[str, str]:
    """A copy of `environ` (default: this process's) set up for a seva command: `defaults()` where
    unset (an explicit PREFECT_HOME etc. wins) and PREFECT_API_URL as `choose_api` decides."""
    env = dict(os.environ if environ is None else environ)
    for key, value in defaults().items():
        env.setdefault(key, value)
    url = choose_api(env, default_port() if port is None else port)
    env.pop("PREFECT_API_URL", None)
    if url:
        env["PREFECT_API_URL"] = url
    return env


def use_prefect(port: int | None = None) -> str | None:
    """Set up this process for Prefect; return the API URL, or None for a temporary server.

    Call it before anything imports prefect: Prefect reads its settings once, at import.
    """
    env = configured(port=port)
    if "PREFECT_API_URL" not in env:
        os.environ.pop("PREFECT_API_URL", None)  # e.g. an empty one: Prefect would try to use it
    os.environ.update(env)
    return env.get("PREFECT_API_URL")


@contextlib.contextmanager
def prefect_errors() -> Iterator[None]:
    """Turn Prefect's connection failures (a RuntimeError and a screen of traceback) into SevaErrors."""
    try:
        yield
    except RuntimeError as e:
        msg = str(e)
        lost = re.search(r"Failed to reach API at (\S+?)\.?(\s|$)", msg)
        if lost:
            raise unreachable(lost.group(1), in_profile=not os.environ.get("PREFECT_API_URL")) from None
        if msg.startswith("Timed out while attempting to connect to ephemeral"):
            timeout = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_TIMEOUT_S)
            raise SevaError(
                f"Prefect's temporary server did not start within {timeout} s. Start a server once with "
                "`seva serve --background` (then rerun), or raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS."
            ) from None
        raise


def _prefect(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("prefect")
    return subprocess.run([str(exe), *args], env=env, cwd=ROOT, check=check, capture_output=True, text=True)


def start(port: int = DEFAULT_PORT, home: Path | None = None) -> dict[str, int]:
    """Start (or reuse) the server, create the pool, deploy, start a worker; return their pids."""
    home = home or ROOT / ".prefect"
    env = prefect_env(port, home)
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    exe = str(Path(sys.executable).with_name("prefect"))
    pids: dict[str, int] = {}
    if not healthy(port):
        server = subprocess.Popen(
            [exe, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=ROOT, stdout=open(logs / "server.log", "a"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        pids["server"] = server.pid
        deadline = time.time() + 120
        while not healthy(port):
            if server.poll() is not None or time.time() > deadline:
                raise SevaError(f"Prefect server did not start on 127.0.0.1:{port}; see {logs / 'server.log'}.")
            time.sleep(0.5)
    if _prefect("work-pool", "inspect", POOL, env=env, check=False).returncode != 0:
        _prefect("work-pool", "create", POOL, "--type", "process", env=env)
    deployed = _prefect("deploy", "--all", "--no-prompt", env=env, check=False)
    if deployed.returncode != 0:
        raise SevaError(f"`prefect deploy --all` failed:\n{deployed.stdout[-2000:]}{deployed.stderr[-2000:]}")
    old = _read_pids(home)
    if "worker" in old and _alive(old["worker"]):  # idempotent: one worker per project
        pids["worker"] = old["worker"]
        pids.setdefault("server", old.get("server", 0))
        _write_pids(home, pids)
        return pids
    worker = subprocess.Popen(
        [exe, "worker", "start", "--pool", POOL],
        env=env, cwd=ROOT, stdout=open(logs / "worker.log", "a"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    pids["worker"] = worker.pid
    pids.setdefault("server", old.get("server", 0))
    _write_pids(home, pids)
    return pids


def _read_pids(home: Path) -> dict[str, int]:
    try:
        lines = (home / "pids").read_text().splitlines()
    except FileNotFoundError:
        return {}
    return {k: int(v) for k, v in (line.split() for line in lines if line.strip())}


def _write_pids(home: Path, pids: dict[str, int]) -> None:
    (home / "pids").write_text("".join(f"{k} {v}\n" for k, v in pids.items() if v))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop(home: Path | None = None) -> None:
    """Stop the worker before the server (the other order hangs the worker, DESIGN §3)."""
    home = home or ROOT / ".prefect"
    pids = _read_pids(home)
    for name in ("worker", "server"):
        pid = pids.get(name)
        if not pid or not _alive(pid):
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(150):
            if not _alive(pid):
                break
            time.sleep(0.1)
    (home / "pids").unlink(missing_ok=True)
