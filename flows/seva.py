"""The `seva` flow: one Prefect task per stage, wired in order. No stage logic lives here.

    prefect deployment run seva/full --watch
    prefect deployment run seva/augment --params '{"overrides": {"augment.noise_step": 800}}'
    seva run --until augment augment.noise_step=800          # same flow, from the CLI

A task's cache key is the stage's content key (seva_tasks/store.py), so a hit shows as `Cached`.
Before `evaluate`, the task `evaluate-base` answers and scores the base model, keyed on the model and
the benchmarks only: after a training change it stays `Cached`. Task results are small JSON
references (never data, never pickle).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from seva_tasks import pipeline, progress
from seva_tasks.config import PipelineConfig, load_config, resolve


def _preview(ref: dict, rows: int = 10) -> list[dict]:
    """The first rows of the stage's main Parquet output, as strings (a UI preview, not data)."""
    import polars as pl

    files = sorted(Path(ref["path"]).glob("*.parquet"))
    if not files:
        return []
    df = pl.read_parquet(files[0], n_rows=rows)
    return [{k: str(v)[:200] for k, v in row.items()} for row in df.iter_rows(named=True)]


@contextlib.contextmanager
def _progress(stage: str):
    """Mirror seva_tasks.progress reports into one Prefect progress artifact per stage."""
    state: dict[str, Any] = {}

    def listener(desc: str, done: int, total: int) -> None:
        pct = 100.0 * done / max(total, 1)
        if "id" not in state:
            state["id"] = create_progress_artifact(progress=pct, key=f"{stage}-progress", description=desc)
        elif pct - state.get("pct", 0) >= 5 or done == total:  # throttle API calls
            update_progress_artifact(state["id"], progress=pct, description=desc)
        state["pct"] = pct

    progress.add_listener(listener)
    try:
        yield
    finally:
        progress.remove_listener(listener)


def _cache_key(context, parameters: dict) -> str:
    """The content key, per store: a cached result is a path into its own data dir."""
    root = hashlib.sha256(str(parameters["cfg"].artifacts).encode()).hexdigest()[:8]
    return f"seva-{parameters['name']}-{parameters['key']}-{root}"


# Results are small JSON references (never data, never pickle); a Path: a str would be read as a block name.
cached = task(task_run_name="{name}", cache_key_fn=_cache_key, persist_result=True, result_serializer="json",
              result_storage=resolve("data/prefect-results"))


@cached
def stage(name: str, key: str, cfg: PipelineConfig, upstream: dict[str, dict], force: bool = False) -> dict:
    """Build one stage's artifact (or find it in the store) and return its reference."""
    with _progress(name):
        ref = pipeline.run_stage(cfg, name, upstream, key=key, force=force)
    _publish_artifacts(ref)
    return ref


@cached
def evaluate_base(name: str, key: str, cfg: PipelineConfig, upstream: dict[str, dict]) -> dict:
    """The base model's answers and scores, keyed on the model and benchmarks only: after a training
    change this task stays `Cached` and `evaluate` asks only the aligned model."""
    with _progress(name):
        return pipeline.run_baseline(cfg, upstream)


def _publish_artifacts(ref: dict) -> None:
    """What a person wants to see in the UI: a preview of the output, training curves, the report."""
    name, out = ref["stage"], Path(ref["path"])
    if rows := _preview(ref):
        create_table_artifact(table=rows, key=f"{name}-preview", description=f"{name}: first rows of {out}")
    metrics = out / "metrics.jsonl"
    if name == "train" and metrics.is_file():
        steps = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        create_table_artifact(table=steps, key="train-metrics", description="DPO metrics per logging step")
    if (report := out / "report.md").is_file():
        create_markdown_artifact(key=f"{name}-report", markdown=report.read_text(), description=f"{name} report ({out})")


def _summary(cfg: PipelineConfig, refs: dict[str, dict]) -> str:
    store = pipeline.store_for(cfg)
    lines = ["| stage | key | counts | drops |", "|---|---|---|---|"]
    for name, ref in refs.items():
        stats = (store.manifest(name, ref["key"]) or {}).get("stats", {})
        lines.append(f"| {name} | `{ref['key']}` | {stats.get('counts', '')} | {stats.get('drops', '')} |")
    return "\n".join(lines)


@flow(name="seva", persist_result=False, log_prints=True)
def seva(
    config: str = "toy",
    overrides: dict[str, Any] | None = None,
    until: str | None = None,
    refresh: list[str] | None = None,
) -> dict[str, dict]:
    """Run the stages up to `until` for a preset plus dotted overrides; `refresh` forces stages."""
    cfg = load_config(config, overrides)
    pipeline.prepare(cfg)
    store = pipeline.store_for(cfg)
    refs: dict[str, dict] = {}
    for name in pipeline.stages_until(cfg, until):
        key = pipeline.key_for(cfg, name, refs)
        force = name in (refresh or [])
        if name == "evaluate":
            base_key, done = pipeline.baseline(cfg, refs)
            evaluate_base.with_options(refresh_cache=True if (force or not done) else None)(
                "evaluate-base", base_key, cfg, dict(refs))
        # Prefect's cache record can outlive the artifact dir: if the dir is gone, recompute.
        fresh = store.manifest(name, key) is not None
        refresh_cache = True if (force or not fresh) else None  # None, not False: keep the global setting
        refs[name] = stage.with_options(refresh_cache=refresh_cache)(name, key, cfg, dict(refs), force)
    create_markdown_artifact(key="seva-summary", markdown=_summary(cfg, refs), description="seva run summary")
    for name, ref in refs.items():
        print(f"{name}: {ref['path']}")
    return refs


if __name__ == "__main__":
    seva()
