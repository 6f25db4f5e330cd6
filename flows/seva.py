"""The `seva` flow: one Prefect task per stage, wired in order. No stage logic lives here.

    prefect deployment run seva/full --watch
    prefect deployment run seva/augment --params '{"overrides": {"augment.noise_step": 800}}'
    seva run --until augment augment.noise_step=800          # same flow, from the CLI
    seva run rounds=2 round.2.train.learning_rate=1e-4       # iterative SeVa: tasks sample[r2]…evaluate[r2]

A task's cache key is the stage's content key (seva_tasks/pipeline.py: config, upstream digests,
code, model and data fingerprints), so a hit shows as `Cached`. `baseline` (the base model's answers
and scores) depends only on the model and the benchmarks: after a training change it stays `Cached`.
Task results are small JSON references (never data, never pickle).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.glue import cache_key, publish, stage_progress, summary
from seva_tasks import pipeline
from seva_tasks.config import PipelineConfig, load_config, resolve


# Results are small JSON references (never data, never pickle); a Path: a str would be read as a block name.
cached = task(task_run_name="{name}", cache_key_fn=cache_key, persist_result=True, result_serializer="json",
              result_storage=resolve("data/prefect-results"))


@cached
def stage(name: str, key: str, cfg: PipelineConfig, upstream: dict[str, dict], force: bool = False) -> dict:
    """Build one stage's artifact (or find it in the store) and return its reference."""
    with stage_progress(name):
        ref = pipeline.run_stage(cfg, name, upstream, key=key, force=force)
    publish(ref)
    return ref


@flow(name="seva", persist_result=False, log_prints=True)
def seva(
    config: str = "toy",
    overrides: dict[str, Any] | None = None,
    until: str | None = None,
    refresh: list[str] | None = None,
) -> dict[str, dict]:
    """Run the stages up to `until` for a preset plus dotted overrides; `refresh` forces stages.

    Names are nodes: `train`, or `train[r2]` for round 2 of a `rounds=k` run (`refresh: [train]`
    forces train in every round)."""
    cfg = load_config(config, overrides)
    pipeline.prepare(cfg)
    store = pipeline.store_for(cfg)
    refs: dict[str, dict] = {}
    for name in pipeline.stages_until(cfg, until):
        key = pipeline.key_for(cfg, name, refs)
        force = bool({name, pipeline.parse(name)[0]} & set(refresh or []))
        # Prefect's cache record can outlive the artifact dir: if the dir is gone, recompute.
        fresh = store.manifest(pipeline.parse(name)[0], key) is not None
        refresh_cache = True if (force or not fresh) else None  # None, not False: keep the global setting
        refs[name] = stage.with_options(refresh_cache=refresh_cache)(name, key, cfg, dict(refs), force)
    create_markdown_artifact(key="seva-summary", markdown=summary(cfg, refs), description="seva run summary")
    for name, ref in refs.items():
        print(f"{name}: {ref['path']}")
    return refs


if __name__ == "__main__":
    seva()
