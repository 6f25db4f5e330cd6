"""The stage chain, its cache keys, and status: everything the flow and the CLI share.

A stage is a module `seva_tasks/<name>.py` with
    VERSION: int                   bump when the stage's behaviour changes (part of the key)
    DEPS: tuple[str, ...]          upstream stages whose artifact dirs `run` reads
    RESUMABLE: bool (optional)     keep `.partial/` between attempts (generate's shards)
    fingerprint(cfg) (optional)    JSON-able identity of external inputs (files outside the store)
    run(cfg, inputs, out_dir) -> dict of stats for the manifest
It knows nothing of Prefect.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from seva_tasks.config import PipelineConfig
from seva_tasks.errors import ConfigError
from seva_tasks.store import Store, stage_key

STAGES = ("sample", "augment")


def module(name: str) -> ModuleType:
    return importlib.import_module(f"seva_tasks.{name}")


def stages_until(until: str | None) -> tuple[str, ...]:
    if until is None:
        return STAGES
    if until not in STAGES:
        raise ConfigError(f"Unknown stage {until!r} for --until. Stages: {', '.join(STAGES)}.")
    return STAGES[: STAGES.index(until) + 1]


def store_for(cfg: PipelineConfig) -> Store:
    return Store(cfg.artifacts)


def record(cfg: PipelineConfig, name: str, upstream: dict[str, dict]) -> dict:
    """What identifies a stage run (and goes into its manifest)."""
    mod = module(name)
    stage_cfg = getattr(cfg, name)
    fp = getattr(mod, "fingerprint", None)
    return {
        "config": stage_cfg.model_dump(mode="json"),
        "upstream": {dep: {"key": upstream[dep]["key"], "digest": upstream[dep]["digest"]} for dep in mod.DEPS},
        "version": mod.VERSION,
        "external": fp(stage_cfg) if fp else None,
    }


def key_for(cfg: PipelineConfig, name: str, upstream: dict[str, dict]) -> str:
    r = record(cfg, name, upstream)
    return stage_key(name, r["config"], r["upstream"], r["version"], r["external"])


def ref(store: Store, manifest: dict) -> dict:
    """The small JSON reference a Prefect task returns (never the data itself)."""
    stage, key = manifest["stage"], manifest["key"]
    return {"stage": stage, "key": key, "digest": manifest["digest"], "path": str(store.dir(stage, key))}


def prepare(cfg: PipelineConfig) -> None:
    """Build the embedded toy world (data + tiny model) if this config uses it."""
    if cfg.toy is not None:
        module("toy").ensure(cfg.toy)


def run_stage(cfg: PipelineConfig, name: str, upstream: dict[str, dict], *, key: str | None = None, force: bool = False) -> dict:
    """Build (or find) one stage's artifact and return its reference."""
    mod = module(name)
    store = store_for(cfg)
    rec = record(cfg, name, upstream)
    key = key or stage_key(name, rec["config"], rec["upstream"], rec["version"], rec["external"])
    inputs = {dep: Path(upstream[dep]["path"]) for dep in mod.DEPS}
    stage_cfg = getattr(cfg, name)
    manifest = store.build(
        name,
        key,
        lambda out_dir: mod.run(stage_cfg, inputs, out_dir),
        record=rec,
        force=force,
        resumable=getattr(mod, "RESUMABLE", False),
    )
    return ref(store, manifest)


def status(cfg: PipelineConfig, until: str | None = None) -> list[dict]:
    """Each stage as fresh (published for this config), stale (an older artifact exists), or missing."""
    store = store_for(cfg)
    refs: dict[str, dict] = {}
    rows = []
    for name in stages_until(until):
        mod = module(name)
        if any(dep not in refs for dep in mod.DEPS):
            rows.append({"stage": name, "state": "missing", "key": None, "why": "upstream not built"})
            continue
        key = key_for(cfg, name, refs)
        manifest = store.manifest(name, key)
        if manifest is not None:
            refs[name] = ref(store, manifest)
            rows.append({"stage": name, "state": "fresh", "key": key, "why": ""})
            continue
        stage_dir = store.root / name
        older = stage_dir.is_dir() and any((p / "manifest.json").is_file() for p in stage_dir.iterdir() if p.is_dir())
        rows.append({"stage": name, "state": "stale" if older else "missing", "key": key,
                     "why": "config, inputs or code changed" if older else "never built"})
    return rows
