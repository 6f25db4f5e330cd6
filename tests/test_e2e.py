"""End to end through a real local Prefect server + worker (what `make run` does), on the toy world.

Asserts task states as Prefect records them: first run Completed, second run all Cached, a changed
augment setting reruns augment (and what follows) only, and a forced deterministic stage leaves its
downstream Cached (early cutoff on the output digest).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from seva_tasks import pipeline, serve
from seva_tasks.config import ROOT

pytestmark = pytest.mark.slow
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    serve.start(port, home)
    yield port, home
    serve.stop(home)


def _run(server, data_dir: Path, **params) -> dict[str, str]:
    """`prefect deployment run seva/full --watch`; return {task name: state name}."""
    port, home = server
    params.setdefault("overrides", {})["data_dir"] = str(data_dir)
    env = serve.prefect_env(port, home)
    out = subprocess.run(
        [str(ROOT / ".venv/bin/prefect"), "deployment", "run", "seva/full", "--watch", "--params", json.dumps(params)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    flow_run_id = UUID.search(out.stdout).group(0)
    api = f"http://127.0.0.1:{port}/api"
    runs = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).json()
    return {r["name"]: r["state"]["name"] for r in runs if r["name"] in pipeline.STAGES}


def test_full_deployment_caches_by_content(server, tmp_path):
    data = tmp_path / "data"
    first = _run(server, data)
    assert set(first) == set(pipeline.STAGES)
    assert set(first.values()) == {"Completed"}
    for stage in pipeline.STAGES:
        published = [p for p in (data / "artifacts" / stage).iterdir() if (p / "manifest.json").is_file()]
        assert len(published) == 1

    port, _ = server
    found = httpx.post(f"http://127.0.0.1:{port}/api/artifacts/filter", json={}).json()
    keys = {a["key"] for a in found}
    assert {"seva-summary", "sample-preview", "augment-preview"} <= keys, keys
    previews = [a for a in found if a["key"] == "sample-preview"]
    assert previews[0]["type"] == "table" and "question" in previews[0]["data"]

    assert set(_run(server, data).values()) == {"Cached"}

    changed = _run(server, data, overrides={"augment.noise_step": 800})
    assert changed["sample"] == "Cached"
    after_augment = pipeline.STAGES[pipeline.STAGES.index("augment"):]
    assert all(changed[s] == "Completed" for s in after_augment), changed

    forced = _run(server, data, refresh=["sample"])
    assert forced["sample"] == "Completed"
    assert all(forced[s] == "Cached" for s in pipeline.STAGES[1:]), forced
