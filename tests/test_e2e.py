"""End to end through a real local Prefect server + worker (what `make run` does), on the toy world.

Asserts task states as Prefect records them: first run Completed, second run all Cached, a changed
augment setting reruns augment (and what follows) only, and a forced deterministic stage leaves its
downstream Cached (early cutoff on the output digest).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import deploy, task_states
from seva_tasks import pipeline
from seva_tasks.config import ROOT, load_config

pytestmark = pytest.mark.slow


def _run(server, data_dir: Path, deployment: str = "seva/full", **params) -> dict[str, str]:
    """`prefect deployment run <deployment> --watch`; return {stage task name: state name}."""
    params.setdefault("overrides", {})["data_dir"] = str(data_dir)
    states = task_states(server, deploy(server, deployment, params))
    return {name: state for name, state in states.items() if name in pipeline.STAGES}


def _published(data: Path, stage: str) -> list[Path]:
    return [p for p in (data / "artifacts" / stage).iterdir() if (p / "manifest.json").is_file()]


def test_full_deployment_caches_by_content(server, tmp_path):
    data = tmp_path / "data"
    stages = pipeline.stages_until(load_config("toy"), None)
    first = _run(server, data)
    assert set(first) == set(stages) and "baseline" in stages
    assert set(first.values()) == {"Completed"}
    for stage in stages:
        assert len(_published(data, stage)) == 1
    # The model is an input: every stage that loads one names pretrain's model dir and its fingerprint.
    (pretrained,) = _published(data, "pretrain")
    for stage in ("generate", "train", "baseline", "evaluate"):
        (d,) = _published(data, stage)
        model = json.loads((d / "manifest.json").read_text())["model"]
        assert model["path"] == str(pretrained / "model") and len(model["fingerprint"]) == 64, (stage, model)

    port, _ = server
    found = httpx.post(f"http://127.0.0.1:{port}/api/artifacts/filter", json={}).json()
    keys = {a["key"] for a in found}
    assert {"seva-summary", "sample-preview", "augment-preview"} <= keys, keys
    previews = [a for a in found if a["key"] == "sample-preview"]
    assert previews[0]["type"] == "table" and "question" in previews[0]["data"]

    # the stages' own `logging` lines reach the run's log in Prefect (PREFECT_LOGGING_EXTRA_LOGGERS), not only prints
    logs, page = [], [None]
    while page:
        page = httpx.post(f"http://127.0.0.1:{port}/api/logs/filter", json={"limit": 200, "offset": len(logs)}).json()
        logs += page
    assert any(r["name"] == "seva_tasks.stages.filter" and r["message"].startswith("Kept ") for r in logs), \
        sorted({r["name"] for r in logs})

    assert set(_run(server, data).values()) == {"Cached"}

    # What DPO trained on, as a user inspects it: LLaVA's vicuna_v1 prompt, answers ending in </s>.
    shown = subprocess.run([str(ROOT / ".venv/bin/seva"), "inspect", "train-example", f"data_dir={data}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert shown.returncode == 0, shown.stderr[-3000:]
    lines = shown.stdout.splitlines()
    assert any(line.startswith("  <s> A chat between a curious user and an artificial intelligence assistant.") for line in lines)
    answers = [lines[i + 1] for i, line in enumerate(lines) if line.startswith(("chosen (", "rejected ("))]
    assert len(answers) == 2 and all(a.endswith("</s>") for a in answers), shown.stdout

    # A training change reruns train and evaluate only; the base model's evaluation (baseline) stays Cached.
    (base_before,) = _published(data, "baseline")
    beta = _run(server, data, overrides={"train.beta": 0.2})
    assert beta == {**{s: "Cached" for s in stages}, "train": "Completed", "evaluate": "Completed"}, beta
    assert _published(data, "baseline") == [base_before] and len(_published(data, "evaluate")) == 2

    # Per-stage deployment: a changed augment setting reruns augment, not sample.
    changed = _run(server, data, "seva/augment", overrides={"augment.noise_step": 800})
    assert changed == {"sample": "Cached", "augment": "Completed"}, changed  # only what augment needs

    # A forced deterministic stage reproduces its bytes: everything downstream stays Cached.
    forced = _run(server, data, refresh=["sample"])
    assert forced["sample"] == "Completed"
    assert all(forced[s] == "Cached" for s in stages if s != "sample"), forced
