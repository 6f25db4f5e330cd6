"""Configuration: one frozen pydantic model per stage, held by `PipelineConfig`.

A preset YAML in `configs/` (default `toy`) is loaded and overridden by dotted `key=value` strings:

    seva run --until augment sample.seed=3 augment.noise_step=800

Unknown keys and wrong types are rejected together, each message naming the dotted key.
Relative paths in a config resolve against the project root (`SEVA_ROOT`, default: this checkout).
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from seva_tasks.base import ROOT, StageConfig, resolve  # noqa: F401  (re-exported)
from seva_tasks.errors import ConfigError

CONFIGS = ROOT / "configs"


# Stage configs live next to their stage's code; importing them is cheap (pydantic only).
from seva_tasks.stages.augment import AugmentConfig  # noqa: E402
from seva_tasks.benchmarks.protocol import EvaluateConfig  # noqa: E402
from seva_tasks.stages.filter import FilterConfig  # noqa: E402
from seva_tasks.stages.generate import GenerateConfig  # noqa: E402
from seva_tasks.stages.pretrain import PretrainConfig  # noqa: E402
from seva_tasks.stages.sample import SampleConfig  # noqa: E402
from seva_tasks.stages.tower import TowerConfig  # noqa: E402
from seva_tasks.toy import ToyConfig  # noqa: E402
from seva_tasks.stages.train import TrainConfig  # noqa: E402
from seva_tasks.stages.vicuna import VicunaConfig  # noqa: E402


class PipelineConfig(BaseModel):
    """Everything one run needs; each stage reads only its own section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str = Field("toy", description="Name of the preset this config came from (informational).")
    data_dir: Path = Field(Path("data"), description="Where artifacts live (`<data_dir>/artifacts`).")
    model: Path | None = Field(None, description="The model this run starts from: a local llava-hf checkpoint directory (with `pretrain`, its input).")
    toy: ToyConfig | None = Field(None, description="Build the embedded toy world first (toy preset only).")
    vicuna: VicunaConfig | None = Field(None, description="Train the toy model's language model on text first, pretrain's input (toy preset only).")
    tower: TowerConfig | None = Field(None, description="Train the toy model's vision tower first (CLIP's stand-in), after vicuna, pretrain's input (toy preset only).")
    pretrain: PretrainConfig | None = Field(None, description="Instruction-tune the toy model first (toy preset only).")
    sample: SampleConfig = Field(default_factory=SampleConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    rounds: int = Field(1, ge=1, description="SeVa rounds: round r >= 2 samples, augments, generates, filters and trains again, starting from round r-1's merged model (1 = SeVa).")
    rounds_resample: bool = Field(True, description="Each round draws fresh rows (sample.seed + 1000·(r-1)); false: every round reuses round 1's draw.")
    round: dict[int, dict[str, Any]] = Field(default_factory=dict, description="Per-round overrides of the round stages' sections, e.g. round.2.train.learning_rate=1e-4.")

    @model_validator(mode="after")
    def _frozen_tower_is_trained(self) -> "PipelineConfig":
        pre = self.pretrain
        if pre and pre.freeze_tower and self.tower is None:
            raise ValueError("pretrain.freeze_tower keeps the tower the tower stage trained, and this config has no "
                             "`tower:` section. Add one (e.g. tower.steps=3000) or set pretrain.freeze_tower=false.")
        if pre and pre.freeze_projector and self.tower is not None and not self.tower.align:
            raise ValueError("pretrain.freeze_projector keeps the projector the tower stage aligned with the words; "
                             "it needs tower.align: true.")
        return self

    @property
    def artifacts(self) -> Path:
        return resolve(self.data_dir) / "artifacts"

    def at_round(self, r: int) -> PipelineConfig:
        """The config round `r` runs with: round 1 is this config; later rounds apply their `round.r`
        overrides and, with rounds_resample, a fresh sample seed. Raises ConfigError naming `round.r.<key>`."""
        if r == 1:
            return self
        over = self.round.get(r, {})
        if bad := sorted(set(over) - set(ROUND_SECTIONS)):
            raise ConfigError(f"round.{r}: {', '.join(bad)} cannot change per round (per-round sections: "
                              f"{', '.join(ROUND_SECTIONS)}).")
        tree = self.model_dump(exclude={"rounds", "round"})
        for section, values in over.items():
            if not isinstance(values, dict):
                raise ConfigError(f"round.{r}.{section}: expected a mapping of {section} settings (got {values!r}).")
            tree[section] = _merged(tree[section], values)
        if self.rounds_resample and "seed" not in over.get("sample", {}):
            tree["sample"]["seed"] = self.sample.seed + RESAMPLE_STRIDE * (r - 1)
        try:
            return PipelineConfig.model_validate(tree)
        except ValidationError as e:
            raise ConfigError("\n  ".join(_messages(e, f"round.{r}."))) from None


# The stages that run again in every round (evaluate too, with the `evaluate:` settings of round 1, so rounds compare).
ROUND_SECTIONS = ("sample", "augment", "generate", "filter", "train")
RESAMPLE_STRIDE = 1000  # round r draws with sample.seed + 1000·(r-1): apart from every experiment's seeds


def _messages(e: ValidationError, prefix: str = "") -> list[str]:
    """One line per validation error, naming its dotted key (with `prefix`)."""
    out = []
    for err in e.errors():
        loc = prefix + ".".join(str(x) for x in err["loc"])
        got = f" (got {err['input']!r})" if err["type"] != "extra_forbidden" else ""
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        out.append(f"{loc}: {msg}{got}")
    return out


def _merged(base: dict, over: dict) -> dict:
    """`over` deep-merged into a copy of `base` (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_path(preset: str | Path) -> Path:
    p = Path(preset)
    if p.suffix in (".yaml", ".yml"):
        return p if p.is_absolute() else Path.cwd() / p
    return CONFIGS / f"{preset}.yaml"


def parse_overrides(items: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """`["a.b=1", ...]` (CLI) or `{"a.b": 1}` (Prefect params) -> {"a.b": value}; values parse as YAML."""
    if not items:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"Override {item!r} is not of the form key=value, e.g. augment.noise_step=800.")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def _schema_of(ann: Any) -> Any:
    """What a dotted path may continue into: a pydantic model, ("dict", value type), or None (any)."""
    if typing.get_origin(ann) is dict:
        return ("dict", typing.get_args(ann)[1])
    return next((a for a in typing.get_args(ann) or (ann,) if hasattr(a, "model_fields")), None)


def _set_dotted(tree: dict, dotted: str, value: Any, errors: list[str]) -> None:
    """Set `a.b.c=value` in the raw tree, checking each part against the schema as we go."""
    node, schema = tree, PipelineConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if hasattr(schema, "model_fields"):
            if part not in schema.model_fields:
                errors.append(f"{dotted}: unknown key '{part}' (known: {', '.join(schema.model_fields)})")
                return
            schema = _schema_of(schema.model_fields[part].annotation)
        elif isinstance(schema, tuple):  # a dict field: any key, its values follow the value type
            schema = _schema_of(schema[1])
        if i == len(parts) - 1:
            node[part] = value
        else:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]


def load_config(preset: str | Path = "toy", overrides: list[str] | dict[str, Any] | None = None) -> PipelineConfig:
    """Load a preset and apply overrides; raise ConfigError listing every problem at once."""
    path = preset_path(preset)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
        raise ConfigError(f"No preset {str(preset)!r} (looked for {path}). Known presets: {known}.")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    tree.setdefault("preset", path.stem)
    errors: list[str] = []
    for dotted, value in parse_overrides(overrides).items():
        if isinstance(tree.get("round"), dict):  # `round: {2: ...}` in YAML and `round.2.x=` on the CLI: one key
            tree["round"] = {str(k): v for k, v in tree["round"].items()}
        _set_dotted(tree, dotted, value, errors)
    try:
        cfg = PipelineConfig.model_validate(tree)
    except ValidationError as e:
        errors += _messages(e)
        cfg = None
    for r in sorted(cfg.round) if cfg is not None else ():
        if not 2 <= r:
            errors.append(f"round.{r}: per-round overrides start at round 2 (round 1 is the config itself)")
            continue
        try:
            cfg.at_round(r)
        except ConfigError as e:
            errors.append(str(e))
    if errors:
        raise ConfigError(f"Invalid config from {path}:\n  " + "\n  ".join(errors) + "\nFix the preset or the override and rerun.")
    return cfg
