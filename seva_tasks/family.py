"""Which model family a checkpoint belongs to, read from its `config.json` (DESIGN §8).

Each family's constants and code live in its own package (`seva_tasks.llava`, `seva_tasks.qwen2vl`);
code elsewhere asks `family(model)` and dispatches, so no LLaVA-1.5 assumption (576 image tokens,
pad-to-square, CLIP normalisation, vicuna strings) leaks into another family's path.
Imported by the engine env too: standard library only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from seva_tasks.errors import ConfigError, InputError

Family = Literal["llava", "qwen2_vl"]

# `architectures[0]` of the checkpoint -> family (what vLLM also dispatches on)
ARCHITECTURES: dict[str, Family] = {
    "LlavaForConditionalGeneration": "llava",
    "Qwen2VLForConditionalGeneration": "qwen2_vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_vl",
}


def family(model: Path | str) -> Family:
    """The family of the model directory `model`; InputError naming the file when unknown or unreadable."""
    path = Path(model) / "config.json"
    try:
        archs = json.loads(path.read_text()).get("architectures") or []
    except (OSError, ValueError) as e:
        raise InputError(f"Cannot read the model's {path}: {e}. Point the stage's model at a transformers "
                         f"checkpoint directory (config.json + safetensors).") from e
    found = [ARCHITECTURES[a] for a in archs if a in ARCHITECTURES]
    if not found:
        raise InputError(f"{path} names architectures {archs}; seva supports {sorted(ARCHITECTURES)}. "
                         f"Use a LLaVA-1.5 or Qwen2(.5)-VL checkpoint.")
    return found[0]


def check_template(model: Path | str, template: str, field: str) -> None:
    """ConfigError when `field` (e.g. "train.conv_template") asks a non-LLaVA model for LLaVA-1.5's
    conversation strings: they mean nothing to it; its own chat template is its format."""
    if template != "chat_template" and (fam := family(model)) != "llava":
        raise ConfigError(f"{field}={template} renders LLaVA-1.5's conversation strings, but {model} is a "
                          f"{fam} model. Set {field}=chat_template.")
