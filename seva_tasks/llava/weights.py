"""Weight names of LLaVA checkpoints: what transformers saves vs what llava-hf files (and vLLM 0.32) hold.

transformers >= 5.19 names the vision tower `model.vision_tower.*`; vLLM 0.32 loads
`vision_tower.vision_model.*`. Every model seva writes (toy, pretrain, train's merge) goes through here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

PROJECTOR = "multi_modal_projector"  # vision features -> text hidden size: SeVa trains it in full (modules_to_save)


def checkpoint_names(state: dict) -> dict:
    """The original llava-hf names, which both transformers and vLLM 0.32 load.

    vLLM maps `model.vision_tower.*` to `vision_tower.*` and then needs `vision_model.` inside it;
    transformers >= 5.19 drops that level, so write `vision_tower.vision_model.*` ourselves.
    """
    prefixes = {"model.vision_tower.": "vision_tower.vision_model.",
                "model.multi_modal_projector.": "multi_modal_projector.",
                "model.language_model.": "language_model.model.", "lm_head.": "language_model.lm_head."}
    out = {}
    for name, tensor in state.items():
        new = next((to + name[len(fr):] for fr, to in prefixes.items() if name.startswith(fr)), None)
        if new is None:
            raise ValueError(f"Unexpected weight {name!r} in the tiny LLaVA; update seva_tasks.llava.weights.checkpoint_names.")
        out[new] = tensor.detach().contiguous()
    return out


def vllm_weight_names(model_dir: Path) -> int:
    """Rename `vision_tower.X` to `vision_tower.vision_model.X` in every safetensors file; returns renames."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    pattern = re.compile(r"^((?:model\.)?vision_tower\.)(?!vision_model\.)")
    renamed = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
            if not any(pattern.match(k) for k in keys):
                continue
            state = {pattern.sub(r"\1vision_model.", k): f.get_tensor(k) for k in keys}
            meta = f.metadata() or {"format": "pt"}
        renamed += sum(1 for k in keys if pattern.match(k))
        save_file(state, str(path), metadata=meta)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {pattern.sub(r"\1vision_model.", k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))
    return renamed


def for_serving(model_dir: Path) -> int:
    """The merged model's names as vLLM 0.32 and transformers both load them (`vllm_weight_names`)."""
    return vllm_weight_names(model_dir)
