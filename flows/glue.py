"""Prefect glue for the `seva` flow: the cache key, the progress bridge, and what a run publishes to the UI.

Stage code never imports Prefect; this module turns its progress reports into progress artifacts,
its outputs into table/markdown artifacts, and the store's content key into the task's cache key.
Every picture goes into the markdown as a data URI (seva_tasks/plots.py): the UI cannot resolve a
relative path, and an artifact dir is immutable once published, so curves drawn here stay out of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from seva_tasks import pipeline, plots, progress
from seva_tasks.config import PipelineConfig

# The stages log with `logging`; serve.defaults() hands the `seva_tasks` loggers to Prefect
# (PREFECT_LOGGING_EXTRA_LOGGERS), and at INFO their lines join each run's log, in the terminal and the UI.
logging.getLogger("seva_tasks").setLevel(logging.INFO)


def preview(ref: dict, rows: int = 10) -> list[dict]:
    """The first rows of the stage's main Parquet output, as strings (a UI preview, not data)."""
    import polars as pl

    files = sorted(Path(ref["path"]).glob("*.parquet"))
    if not files:
        return []
    df = pl.read_parquet(files[0], n_rows=rows)
    return [{k: str(v)[:200] for k, v in row.items()} for row in df.iter_rows(named=True)]


def slug(node: str) -> str:
    """A node as a Prefect artifact key (lowercase, digits, dashes): `generate[r2]` -> `generate-r2`."""
    return node.replace("[", "-").replace("]", "")


@contextlib.contextmanager
def stage_progress(stage: str):
    """Mirror seva_tasks.progress reports into one Prefect progress artifact per node (`stage`: its name)."""
    state: dict[str, Any] = {}

    def listener(desc: str, done: int, total: int) -> None:
        pct = 100.0 * done / max(total, 1)
        if "id" not in state:
            state["id"] = create_progress_artifact(progress=pct, key=f"{slug(stage)}-progress", description=desc)
        elif pct - state.get("pct", 0) >= 5 or done == total:  # throttle API calls
            update_progress_artifact(state["id"], progress=pct, description=desc)
        state["pct"] = pct

    progress.add_listener(listener)
    try:
        yield
    finally:
        progress.remove_listener(listener)


def cache_key(context, parameters: dict) -> str:
    """The content key, per store: a cached result is a path into its own data dir."""
    root = hashlib.sha256(str(parameters["cfg"].artifacts).encode()).hexdigest()[:8]
    return f"seva-{slug(parameters['name'])}-{parameters['key']}-{root}"


def publish(ref: dict) -> None:
    """What a person wants to see in the UI: a preview of the output, training curves, the report."""
    name, out = ref["stage"], Path(ref["path"])
    node = ref.get("node", name)
    key = slug(node)
    if rows := preview(ref):
        create_table_artifact(table=rows, key=f"{key}-preview", description=f"{node}: first rows of {out}")
    steps = _jsonl(out / "metrics.jsonl")
    if name == "train" and steps:
        create_table_artifact(table=steps, key=f"{key}-metrics", description=f"{node}: DPO metrics per logging step")
    if name in ("train", "vicuna", "tower", "pretrain") and (curves := _curves(name, out, steps)):
        create_markdown_artifact(key=f"{key}-curves", markdown=curves, description=f"{node} curves ({out})")
    if (report := out / "report.md").is_file():
        create_markdown_artifact(key=f"{key}-report", markdown=plots.embed(report.read_text(), out),
                                 description=f"{node} report ({out})")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _curves(name: str, out: Path, steps: list[dict]) -> str | None:
    """Markdown with the stage's training curves embedded: DPO (train) or (vicuna, pre)training + held-out accuracy."""
    logged = [r for r in steps if "step" in r and "loss" in r]
    if name == "train":
        png, what = plots.train_curves(steps), "DPO loss, reward margin and reward accuracy per step"
        last = logged[-1] if logged else {}
        final = ", ".join(f"{k} {last[k]:.4g}" for k in plots.TRAIN_CURVES if isinstance(last.get(k), (int, float)))
    else:
        heldout = json.loads((out / "manifest.json").read_text()).get("stats", {}).get("heldout") or {}
        png, what = plots.pretrain_curves(steps, heldout), "pretraining loss and held-out accuracy"
        acc = (heldout.get("accuracy") or {}).get("all")
        final = ", ".join(([f"loss {logged[-1]['loss']:.4g}"] if logged else []) +
                          ([f"held-out accuracy {100 * acc:.1f}% over {heldout.get('questions')} questions"]
                           if acc is not None else []))
    if png is None:
        return None
    return "\n".join([f"# {name}: {what}", "", f"{len(logged)} logged steps in `{out / 'metrics.jsonl'}`"
                      + (f"; last: {final}." if final else "."), "", plots.image(what, png), ""])


def summary(cfg: PipelineConfig, refs: dict[str, dict]) -> str:
    store = pipeline.store_for(cfg)
    lines = ["| stage | key | counts | drops |", "|---|---|---|---|"]
    for name, ref in refs.items():
        stats = (store.manifest(ref["stage"], ref["key"]) or {}).get("stats", {})
        lines.append(f"| {name} | `{ref['key']}` | {stats.get('counts', '')} | {stats.get('drops', '')} |")
    return "\n".join(lines)
