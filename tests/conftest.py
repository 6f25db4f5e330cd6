"""Fixtures shared by the tests that start real servers on 127.0.0.1."""

from __future__ import annotations

import json
import re
import socket
import subprocess

import httpx
import pytest

from seva_tasks import serve
from seva_tasks.config import ROOT

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# The longest files, started first so that `make test`'s two workers finish together (file order otherwise).
LONGEST_FIRST = ("test_e2e.py", "test_ray.py", "test_ui.py", "test_rounds.py", "test_qwen2vl_pipeline.py")


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order within a rank


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


def deploy(server, deployment: str, params: dict) -> str:
    """`prefect deployment run <deployment> --watch` against the test server; return the flow run's id."""
    port, home = server
    out = subprocess.run(
        [str(ROOT / ".venv/bin/prefect"), "deployment", "run", deployment, "--watch", "--params", json.dumps(params)],
        env=serve.prefect_env(port, home), cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return UUID.search(out.stdout).group(0)


def task_states(server, flow_run: str) -> dict[str, str]:
    """{task run name: state name} of one flow run, as the Prefect API records them."""
    port, _ = server
    runs = httpx.post(f"{serve.api_url(port)}/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run]}}}).json()
    return {r["name"]: r["state"]["name"] for r in runs}


# A toy run in a few minutes: few pairs, a short pretraining, two DPO steps, three benchmarks (SQA among them).
# 200 pretraining steps (~40 s) make answers depend on the image (at 40 the model says "A" to everything, so
# every pair ties); noise step 999 destroys the image, so ~14 of 36 pairs differ and survive the filter.
SMALL_RUN = {"sample.subsets": {"ocr_vqa": {"images": 12, "questions_per_image": 2},
                                "textvqa": {"images": 12, "questions_per_image": 1}},
             "pretrain.steps": 200, "pretrain.logging_steps": 20, "pretrain.heldout": 8, "pretrain.extra": {},
             "augment.noise_step": 999, "filter.mode": "seva", "train.max_steps": 2,
             "evaluate.benchmarks": ["pope", "mme", "sqa"]}


@pytest.fixture(scope="session")
def small_run() -> dict:
    """Overrides for a toy run of `seva/full` in a few minutes (UI and reliability tests)."""
    return SMALL_RUN
