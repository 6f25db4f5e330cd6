"""The stage graph, its cache keys, and status: everything the flow and the CLI share.

    STAGES  one `Stage` per step, in run order: its module (`run`), the inputs it reads, its config section.

A stage's inputs are upstream artifact dirs and, for the stages that load weights, `model`: the
model this run starts from (the preset's `model:`, or the output of the last of the vicuna, tower and pretrain
stages the preset has), resolved once here (`model_input`) and passed like any other input.

With `rounds: k`, round r >= 2 runs sample…evaluate again as nodes `sample[r2]`…`evaluate[r2]`:
generate and train load round r-1's merged model (train puts a fresh LoRA on it, and that model, with
the adapter off, is DPO's reference: RLAIF-V's rounds), and each node reads its round's config
(`PipelineConfig.at_round`). A node's artifact lives under its stage's name; its key is
the stage's, so round 2 never invalidates round 1 and identical inputs share one artifact. Its key is
sha256(stage, its config section, each upstream's (key, digest), the digest of its code and the
project modules it imports, and the content fingerprints of its external inputs, the model's
included); the manifest records the same, plus the model's path. Nothing here knows Prefect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from seva_tasks.artifacts import MERGED, MODEL
from seva_tasks.config import PipelineConfig, resolve
from seva_tasks.errors import ConfigError, InputError
from seva_tasks.fingerprint import code_digest, fingerprint
from seva_tasks.stages import augment, baseline, evaluate, filter, generate, pretrain, sample, tower, train, vicuna
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
    Stage("vicuna", vicuna, ("model",)),  # toy only: the random tiny LLaVA's LM trained on text; pretrain's model
    Stage("tower", tower, ("model",)),  # toy only: its vision tower trained (CLIP's stand-in), after vicuna
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
# What every round runs again (round r >= 2 as `generate[r2]`…); vicuna, tower, pretrain and baseline run once.
MAKERS = ("vicuna", "tower", "pretrain")  # stages that make the run's model, in order, each where the config has its section
ROUND_STAGES = ("sample", "augment", "generate", "filter", "train", "evaluate")
NODE = re.compile(r"^(\w+)\[r(\d+)\]$")


def node(name: str, r: int = 1) -> str:
    """The graph node of stage `name` in round `r`: `train` in round 1, `train[r2]` in round 2."""
    return name if r == 1 else f"{name}[r{r}]"


def parse(node_name: str) -> tuple[str, int]:
    """`train[r2]` -> ("train", 2); `train` -> ("train", 1). Raises ConfigError for an unknown stage."""
    m = NODE.match(node_name)
    name, r = (m.group(1), int(m.group(2))) if m else (node_name, 1)
    if name not in STAGES or (r != 1 and (name not in ROUND_STAGES or r < 2)):
        raise ConfigError(f"Unknown stage {node_name!r}. Stages: {', '.join(STAGES)}; "
                          f"in round r >= 2: {', '.join(node(s, 2) for s in ROUND_STAGES)}.")
    return name, r


def nodes(cfg: PipelineConfig) -> tuple[str, ...]:
    """Every node this config runs, in run order: vicuna, tower and pretrain (where configured), round 1 with baseline, then each later round."""
    first = tuple(s for s in STAGES if s not in MAKERS or getattr(cfg, s) is not None)
    return first + tuple(node(s, r) for r in range(2, cfg.rounds + 1) for s in ROUND_STAGES)


def stages_until(cfg: PipelineConfig, until: str | None) -> tuple[str, ...]:
    """The nodes this config runs, in order: all of them, or `until` and what it needs (vicuna, tower, pretrain only where configured)."""
    stages = nodes(cfg)
    if until is None:
        return stages
    if until not in stages:
        parse(until)  # an unknown stage says which exist
        raise ConfigError(f"Stage {until!r} is not in this run (rounds={cfg.rounds}). Stages: {', '.join(stages)}.")
    needed, todo = set(), [until]
    while todo:
        if (name := todo.pop()) not in needed:
            needed.add(name)
            todo.extend(deps(cfg, name).values())
    return tuple(s for s in stages if s in needed)


def deps(cfg: PipelineConfig, node_name: str) -> dict[str, str]:
    """Upstream nodes of a node, as {input name the stage reads: node}. The last configured model maker
    before it (vicuna, tower, pretrain) comes in where it makes the model, round r-1's train where round r starts
    from its merged model, and evaluate[rR] also reads the previous round's evaluate (`previous`), so its
    report has a column per round."""
    name, r = parse(node_name)
    stage = STAGES[name]
    out = {dep: dep if dep == "baseline" else node(dep, r) for dep in stage.deps}
    if "model" in stage.inputs:
        makers = [m for m in MAKERS[:MAKERS.index(name)] if getattr(cfg, m) is not None] if name in MAKERS else \
            [m for m in MAKERS if getattr(cfg, m) is not None]
        if r > 1 and name != "evaluate":  # evaluate's `model` is the base model (the report and the judge name it)
            out["model"] = node("train", r - 1)
        elif makers:
            out["model"] = makers[-1]
    if name == "evaluate" and r > 1:
        out["previous"] = node("evaluate", r - 1)
    return out


def model_input(cfg: PipelineConfig, node_name: str, upstream: dict[str, dict]) -> Path | None:
    """The model directory a node loads: round r-1's merged model in round r >= 2, else the output of the
    last model maker before it (vicuna, tower, pretrain) where there is one, else the preset's."""
    name, r = parse(node_name)
    if "model" not in STAGES[name].inputs:
        return None
    made_by = deps(cfg, node_name).get("model")
    if made_by in MAKERS:
        return Path(upstream[made_by]["path"]) / MODEL
    if made_by is not None:
        return Path(upstream[made_by]["path"]) / MERGED
    if cfg.model is None:
        raise ConfigError(f"Stage '{name}' needs a model and the config has none. Set `model:` in the preset "
                          "or pass model=/path/to/llava-1.5-7b-hf.")
    return resolve(cfg.model)


def store_for(cfg: PipelineConfig) -> Store:
    return Store(cfg.artifacts)


def record(cfg: PipelineConfig, node_name: str, upstream: dict[str, dict]) -> dict:
    """What identifies a node's run (and goes into its manifest): its round's config section, its
    upstream by (key, digest), its code, and the model by path and content."""
    name, r = parse(node_name)
    stage = STAGES[name]
    stage_cfg = stage.config(cfg.at_round(r))
    model = model_input(cfg, node_name, upstream)
    return {
        "config": stage_cfg.model_dump(mode="json"),
        "upstream": {dep: {"key": upstream[up]["key"], "digest": upstream[up]["digest"]}
                     for dep, up in deps(cfg, node_name).items() if dep != "model"},  # the model counts by content
        "code": stage.code,
        "model": None if model is None else {"path": str(model), "fingerprint": fingerprint(model)},
        "external": stage.external(stage_cfg),
        "round": r,
    }


def _key(name: str, rec: dict) -> str:
    # The model counts by content: the same weights under another path are the same input. The round
    # does not: a later round with round 1's inputs (rounds_resample: false) is round 1's artifact.
    model = rec["model"] and rec["model"]["fingerprint"]
    return stage_key(name, rec["config"], rec["upstream"], rec["code"], {"model": model, "data": rec["external"]})


def key_for(cfg: PipelineConfig, node_name: str, upstream: dict[str, dict]) -> str:
    return _key(parse(node_name)[0], record(cfg, node_name, upstream))


def ref(store: Store, manifest: dict) -> dict:
    """The small JSON reference a Prefect task returns (never the data itself)."""
    stage, key = manifest["stage"], manifest["key"]
    return {"stage": stage, "key": key, "digest": manifest["digest"], "path": str(store.dir(stage, key))}


def prepare(cfg: PipelineConfig) -> None:
    """Build the embedded toy world (data + tiny model) if this config uses it, and the tiny Qwen2-VL
    when the run starts from it (toy-qwen2vl)."""
    if cfg.toy is not None:
        from seva_tasks import toy
        from seva_tasks.toy import qwen2vl

        toy.ensure(cfg.toy)
        if cfg.model is not None and resolve(cfg.model) == qwen2vl.model_dir(cfg.toy):
            qwen2vl.ensure(cfg.toy)


def run_stage(cfg: PipelineConfig, node_name: str, upstream: dict[str, dict], *, key: str | None = None,
              force: bool = False) -> dict:
    """Build (or find) one node's artifact and return its reference (`node`: e.g. `train` or `train[r2]`)."""
    name, r = parse(node_name)
    stage = STAGES[name]
    store = store_for(cfg)
    rec = record(cfg, node_name, upstream)
    inputs = {dep: Path(upstream[up]["path"]) for dep, up in deps(cfg, node_name).items() if dep != "model"}
    if rec["model"] is not None:
        inputs["model"] = Path(rec["model"]["path"])
        if rec["model"]["fingerprint"] is None:
            raise InputError(f"{inputs['model']}: no model directory (stage '{node_name}'). Point `model:` at a local "
                             "llava-hf checkpoint, e.g. model=/models/llava-1.5-7b-hf, and rerun.")
    manifest = store.build(
        name,
        key or _key(name, rec),
        lambda out_dir: stage.module.run(stage.config(cfg.at_round(r)), inputs, out_dir),
        record=rec,
        force=force,
        resumable=stage.resumable,
    )
    return {**ref(store, manifest), "node": node_name, "round": r}


def status(cfg: PipelineConfig, until: str | None = None) -> list[dict]:
    """Each stage as fresh (published for this config and code), stale (an older artifact exists), or missing."""
    store = store_for(cfg)
    refs: dict[str, dict] = {}
    rows = []
    for name in stages_until(cfg, until):
        stage_dir = store.root / parse(name)[0]
        older = stage_dir.is_dir() and any((p / "manifest.json").is_file() for p in stage_dir.iterdir() if p.is_dir())
        if waiting := [dep for dep in deps(cfg, name).values() if dep not in refs]:
            # Its key depends on what the upstream will publish: unknown until that reruns.
            rows.append({"stage": name, "state": "stale" if older else "missing", "key": None,
                         "why": f"upstream {', '.join(waiting)} not up to date"})
            continue
        key = key_for(cfg, name, refs)
        manifest = store.manifest(parse(name)[0], key)
        if manifest is not None:
            refs[name] = ref(store, manifest)
            rows.append({"stage": name, "state": "fresh", "key": key, "why": ""})
            continue
        rows.append({"stage": name, "state": "stale" if older else "missing", "key": key,
                     "why": "config, code or inputs changed" if older else "never built"})
    return rows
