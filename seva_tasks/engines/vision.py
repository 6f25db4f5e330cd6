"""Where and in which dtype a family's vision encoder runs for SeVa's exact noise, and the checkpoint's
weight index it loads from. The encoders are the families' (DESIGN §8):

- `llava_encoder(model, dtype, device)`: LLaVA's tower + projector (seva_tasks.llava.vision).
- `qwen_encoder(model, dtype, device)`: Qwen2-VL's visual tower + merger (seva_tasks.qwen2vl.vision).

Both run on `device` ('auto': the GPU when there is one: SeVa's ~16k noised images take hours on a
CPU) in the preset's dtype there, and always in float32 on the CPU (half-precision CPU kernels are
slow or missing); the embeddings are handed to vLLM on the CPU in the model's dtype.
"""

from __future__ import annotations

import json
from pathlib import Path

from seva_tasks.llava.vision import ProjectedTower
from seva_tasks.qwen2vl.vision import VisualEncoder


def _weights(model: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, for single-file and sharded checkpoints."""
    index = model / "model.safetensors.index.json"
    if index.is_file():
        return {k: model / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    from safetensors import safe_open

    files = sorted(model.glob("*.safetensors"))
    out = {}
    for f in files:
        with safe_open(str(f), "pt") as sf:
            out.update({k: f for k in sf.keys()})
    return out


def resolve_dtype(config, dtype: str):
    """The torch dtype for a config's `dtype` setting ('auto': the checkpoint's, else float32)."""
    import torch

    if dtype == "auto":
        found = getattr(config, "dtype", None) or getattr(config.get_text_config(), "dtype", None)
        return found if isinstance(found, torch.dtype) else getattr(torch, str(found or "float32"))
    return getattr(torch, dtype)


def vision_device(setting: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cpu'/'cuda' as asked."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("vision_device=cuda but torch sees no GPU; set generate.engine.vision_device=auto (or cpu).")
    return setting


def _placement(model: Path, dtype: str, device: str) -> dict:
    """device, compute dtype and output dtype of a vision encoder (see the module docstring)."""
    import torch
    from transformers import AutoConfig

    out_dtype = resolve_dtype(AutoConfig.from_pretrained(str(model), local_files_only=True), dtype)
    dev = vision_device(device)
    return {"device": dev, "dtype": out_dtype if dev != "cpu" else torch.float32, "out_dtype": out_dtype}


def llava_encoder(model: Path, dtype: str = "float32", device: str = "auto") -> ProjectedTower:
    """LLaVA's vision tower + projector for `model`, placed and typed by `_placement`."""
    return ProjectedTower(model, _weights(model), **_placement(model, dtype, device))


def qwen_encoder(model: Path, dtype: str = "float32", device: str = "auto") -> VisualEncoder:
    """Qwen2-VL's visual tower + merger for `model`, placed and typed by `_placement`."""
    return VisualEncoder(model, _weights(model), **_placement(model, dtype, device))
