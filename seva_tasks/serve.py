"""A local Prefect server on 127.0.0.1 serving the deployments of prefect.yaml (DESIGN §3).

`seva serve` = `prefect server start` (state in `.prefect/` inside the project, analytics off)
→ `prefect work-pool create seva-local --type process` → `prefect deploy --all` → `prefect worker
start`. prefect.yaml stays the one definition of the deployments; nothing here redefines them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from seva_tasks.config import ROOT
from seva_tasks.errors import SevaError

POOL = "seva-local"


def prefect_env(port: int = 4200, home: Path | None = None) -> dict[str, str]:
    """Environment for every Prefect command we start: local state, loopback API, no telemetry."""
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home or ROOT / ".prefect"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_URL=f"http://127.0.0.1:{port}",
        SEVA_ROOT=str(ROOT),
        HF_HUB_OFFLINE="1",
    )
    return env


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _prefect(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("prefect")
    return subprocess.run([str(exe), *args], env=env, cwd=ROOT, check=check, capture_output=True, text=True)


def start(port: int = 4200, home: Path | None = None) -> dict[str, int]:
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
