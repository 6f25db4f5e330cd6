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

from seva_tasks.config import PipelineConfig, resolve
from seva_tasks.errors import ConfigError
from seva_tasks.store import Store, stage_key

STAGES = ("pretrain", "sample", "augment", "generate", "filter", "train", "evaluate")
# Stages whose `model` is replaced by the pretrain stage's output when the preset has one (toy only).
PRETRAINED_MODEL_STAGES = ("generate", "train", "evaluate")


def module(name: str) -> ModuleType:
    return importlib.import_module(f"seva_tasks.{name}")


def stages_until(cfg: PipelineConfig, until: str | None) -> tuple[str, ...]:
    """The stages this config runs, in order, up to `until` (pretrain only where configured)."""
    stages = tuple(s for s in STAGES if s != "pretrain" or cfg.pretrain is not None)
    if until is None:
        return stages
    if until not in stages:
        raise ConfigError(f"Unknown stage {until!r} for --until. Stages: {', '.join(stages)}.")
    return stages[: stages.index(until) + 1]


def deps(cfg: PipelineConfig, name: str) -> tuple[str, ...]:
    """Upstream stages of `name` for this config: its own DEPS, plus pretrain where it supplies the model."""
    own = tuple(module(name).DEPS)
    return own + ("pretrain",) if cfg.pretrain is not None and name in PRETRAINED_MODEL_STAGES else own


def stage_config(cfg: PipelineConfig, name: str, inputs: dict[str, Path]):
    """The stage's config as `run` sees it: with the pretrained model swapped in where there is one."""
    stage_cfg = getattr(cfg, name)
    if "pretrain" in inputs and name in PRETRAINED_MODEL_STAGES:
        stage_cfg = stage_cfg.model_copy(update={"model": inputs["pretrain"] / "model"})
    return stage_cfg


def store_for(cfg: PipelineConfig) -> Store:
    return Store(cfg.artifacts)


def record(cfg: PipelineConfig, name: str, upstream: dict[str, dict]) -> dict:
    """What identifies a stage run (and goes into its manifest)."""
    mod = module(name)
    stage_cfg = getattr(cfg, name)
    fp = getattr(mod, "fingerprint", None)
    return {
        "config": stage_cfg.model_dump(mode="json"),
        "upstream": {dep: {"key": upstream[dep]["key"], "digest": upstream[dep]["digest"]} for dep in deps(cfg, name)},
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
    inputs = {dep: Path(upstream[dep]["path"]) for dep in deps(cfg, name)}
    stage_cfg = stage_config(cfg, name, inputs)
    manifest = store.build(
        name,
        key,
        lambda out_dir: mod.run(stage_cfg, inputs, out_dir),
        record=rec,
        force=force,
        resumable=getattr(mod, "RESUMABLE", False),
    )
    return ref(store, manifest)


def base_model(cfg: PipelineConfig, upstream: dict[str, dict]) -> Path:
    """The model `evaluate` compares the aligned one against: evaluate.model, else train's starting model."""
    inputs = {"pretrain": Path(upstream["pretrain"]["path"])} if "pretrain" in upstream else {}
    return resolve(stage_config(cfg, "evaluate", inputs).model or stage_config(cfg, "train", inputs).model)


def baseline(cfg: PipelineConfig, upstream: dict[str, dict]) -> tuple[str, bool]:
    """(content key, published?) of the base model's evaluation, which the flow runs as its own task."""
    ev, model = module("evaluate"), base_model(cfg, upstream)
    return ev.baseline_key(cfg.evaluate, model), ev.baseline_done(store_for(cfg), cfg.evaluate, model)


def run_baseline(cfg: PipelineConfig, upstream: dict[str, dict]) -> dict:
    """Answer and score every benchmark with the base model; `evaluate` then reuses these artifacts."""
    return module("evaluate").baseline(store_for(cfg), cfg.evaluate, base_model(cfg, upstream))


def status(cfg: PipelineConfig, until: str | None = None) -> list[dict]:
    """Each stage as fresh (published for this config), stale (an older artifact exists), or missing."""
    store = store_for(cfg)
    refs: dict[str, dict] = {}
    rows = []
    for name in stages_until(cfg, until):
        if any(dep not in refs for dep in deps(cfg, name)):
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
