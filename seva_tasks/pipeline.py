"""The stage graph, its cache keys, and status: everything the flow and the CLI share.

    STAGES  one `Stage` per step, in run order: its module (`run`), the inputs it reads, its config section.

A stage's inputs are upstream artifact dirs and, for the stages that load weights, `model`: the
model this run starts from (the preset's `model:`, or the pretrain stage's output when the preset
has one), resolved once here (`model_input`) and passed like any other input. Its key is
sha256(stage, its config section, each upstream's (key, digest), the digest of its code and the
project modules it imports, and the content fingerprints of its external inputs, the model's
included); the manifest records the same, plus the model's path. Nothing here knows Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from seva_tasks.artifacts import MODEL
from seva_tasks.config import PipelineConfig, resolve
from seva_tasks.errors import ConfigError, InputError
from seva_tasks.fingerprint import code_digest, fingerprint
from seva_tasks.stages import augment, baseline, evaluate, filter, generate, pretrain, sample, train
from seva_tasks.store import Store, stage_key


@dataclass(frozen=True)
class Stage:
    """One step of the graph and the module that does it. A stage module's whole contract:
    `run(cfg, inputs, out_dir) -> stats`, and optionally `fingerprint(cfg) -> dict` naming what it
    reads from outside the store (data files, a judge model), hashed into its key."""

    name: str
    module: ModuleType
    inputs: tuple[str, ...] = ()  # upstream stage names, and "model" for the run's model
    section: str | None = None  # the config section it reads (default: its own name)
    resumable: bool = False  # keep `.partial/` between attempts (finished shards, checkpoints)

    @property
    def deps(self) -> tuple[str, ...]:
        return tuple(i for i in self.inputs if i != "model")

    def config(self, cfg: PipelineConfig):
        return getattr(cfg, self.section or self.name)

    def external(self, stage_cfg) -> dict | None:
        fingerprint = getattr(self.module, "fingerprint", None)
        return fingerprint(stage_cfg) if fingerprint else None

    @property
    def code(self) -> str:
        return code_digest(self.module.__name__)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("pretrain", pretrain, ("model",)),  # toy only: teaches the random tiny LLaVA; its output is the run's model
    Stage("sample", sample),
    Stage("augment", augment, ("sample",)),
    Stage("generate", generate, ("model", "augment"), resumable=True),
    Stage("filter", filter, ("generate",)),
    Stage("train", train, ("model", "filter"), resumable=True),
    # The base model's answers and scores: asked exactly as evaluate asks the aligned model (same section).
    Stage("baseline", baseline, ("model",), section="evaluate", resumable=True),
    Stage("evaluate", evaluate, ("model", "filter", "train", "baseline"), resumable=True),
)}


def stages_until(cfg: PipelineConfig, until: str | None) -> tuple[str, ...]:
    """The stages this config runs, in order: all of them, or `until` and what it needs (pretrain only where configured)."""
    stages = tuple(s for s in STAGES if s != "pretrain" or cfg.pretrain is not None)
    if until is None:
        return stages
    if until not in stages:
        raise ConfigError(f"Unknown stage {until!r} for --until. Stages: {', '.join(stages)}.")
    needed, todo = set(), [until]
    while todo:
        if (name := todo.pop()) not in needed:
            needed.add(name)
            todo.extend(deps(cfg, name))
    return tuple(s for s in stages if s in needed)


def deps(cfg: PipelineConfig, name: str) -> tuple[str, ...]:
    """Upstream stages of `name`: its inputs, plus pretrain where pretrain makes the model it loads."""
    stage = STAGES[name]
    made_by_pretrain = "model" in stage.inputs and name != "pretrain" and cfg.pretrain is not None
    return stage.deps + (("pretrain",) if made_by_pretrain else ())


def model_input(cfg: PipelineConfig, name: str, upstream: dict[str, dict]) -> Path | None:
    """The model directory stage `name` loads: pretrain's output where there is one, else the preset's."""
    if "model" not in STAGES[name].inputs:
        return None
    if name != "pretrain" and cfg.pretrain is not None:
        return Path(upstream["pretrain"]["path"]) / MODEL
    if cfg.model is None:
        raise ConfigError(f"Stage '{name}' needs a model and the config has none. Set `model:` in the preset "
                          "or pass model=/path/to/llava-1.5-7b-hf.")
    return resolve(cfg.model)


def store_for(cfg: PipelineConfig) -> Store:
    return Store(cfg.artifacts)


def record(cfg: PipelineConfig, name: str, upstream: dict[str, dict]) -> dict:
    """What identifies a stage run (and goes into its manifest): the model by path and content."""
    stage = STAGES[name]
    stage_cfg = stage.config(cfg)
    model = model_input(cfg, name, upstream)
    return {
        "config": stage_cfg.model_dump(mode="json"),
        "upstream": {dep: {"key": upstream[dep]["key"], "digest": upstream[dep]["digest"]} for dep in stage.deps},
        "code": stage.code,
        "model": None if model is None else {"path": str(model), "fingerprint": fingerprint(model)},
        "external": stage.external(stage_cfg),
    }


def _key(name: str, rec: dict) -> str:
    # The model counts by content: the same weights under another path are the same input.
    model = rec["model"] and rec["model"]["fingerprint"]
    return stage_key(name, rec["config"], rec["upstream"], rec["code"], {"model": model, "data": rec["external"]})


def key_for(cfg: PipelineConfig, name: str, upstream: dict[str, dict]) -> str:
    return _key(name, record(cfg, name, upstream))


def ref(store: Store, manifest: dict) -> dict:
    """The small JSON reference a Prefect task returns (never the data itself)."""
    stage, key = manifest["stage"], manifest["key"]
    return {"stage": stage, "key": key, "digest": manifest["digest"], "path": str(store.dir(stage, key))}


def prepare(cfg: PipelineConfig) -> None:
    """Build the embedded toy world (data + tiny model) if this config uses it."""
    if cfg.toy is not None:
        from seva_tasks import toy

        toy.ensure(cfg.toy)


def run_stage(cfg: PipelineConfig, name: str, upstream: dict[str, dict], *, key: str | None = None, force: bool = False) -> dict:
    """Build (or find) one stage's artifact and return its reference."""
    stage = STAGES[name]
    store = store_for(cfg)
    rec = record(cfg, name, upstream)
    inputs = {dep: Path(upstream[dep]["path"]) for dep in stage.deps}
    if rec["model"] is not None:
        inputs["model"] = Path(rec["model"]["path"])
        if rec["model"]["fingerprint"] is None:
            raise InputError(f"{inputs['model']}: no model directory (stage '{name}'). Point `model:` at a local "
                             "llava-hf checkpoint, e.g. model=/models/llava-1.5-7b-hf, and rerun.")
    manifest = store.build(
        name,
        key or _key(name, rec),
        lambda out_dir: stage.module.run(stage.config(cfg), inputs, out_dir),
        record=rec,
        force=force,
        resumable=stage.resumable,
    )
    return ref(store, manifest)


def status(cfg: PipelineConfig, until: str | None = None) -> list[dict]:
    """Each stage as fresh (published for this config and code), stale (an older artifact exists), or missing."""
    store = store_for(cfg)
    refs: dict[str, dict] = {}
    rows = []
    for name in stages_until(cfg, until):
        stage_dir = store.root / name
        older = stage_dir.is_dir() and any((p / "manifest.json").is_file() for p in stage_dir.iterdir() if p.is_dir())
        if waiting := [dep for dep in deps(cfg, name) if dep not in refs]:
            # Its key depends on what the upstream will publish: unknown until that reruns.
            rows.append({"stage": name, "state": "stale" if older else "missing", "key": None,
                         "why": f"upstream {', '.join(waiting)} not up to date"})
            continue
        key = key_for(cfg, name, refs)
        manifest = store.manifest(name, key)
        if manifest is not None:
            refs[name] = ref(store, manifest)
            rows.append({"stage": name, "state": "fresh", "key": key, "why": ""})
            continue
        rows.append({"stage": name, "state": "stale" if older else "missing", "key": key,
                     "why": "config, code or inputs changed" if older else "never built"})
    return rows
