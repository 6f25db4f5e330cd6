"""Images as LLaVA-1.5 sees them, SeVa's exact noise, and the vision tower + projector for vLLM.

- `ImagePrep.square(path)`: `expand2square(img, mean·255)` then a bicubic resize to the model's side,
  which is what LLaVA's `process_images(..., image_aspect_ratio="pad")` feeds CLIP (the processor's
  own resize + centre crop of a square at that side is then a no-op).
- `ImagePrep.noised(path, step, seed)`: that image CLIP-normalized, plus SeVa's diffusion noise
  x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε with ε ~ N(0, 1) drawn from `seed` (seva_tasks.augment's recipe).
  It calls `augment.add_diffusion_noise` itself (torch only, no diffusers: fine in the engine env).
- `VisionEncoder`: noised pixel values -> (1, image_tokens, text_hidden) embeddings, i.e. the
  vision tower's penultimate layer (CLS dropped) through the projector, which vLLM's LLaVA accepts
  as `multi_modal_data={"image": embeds}` (`enable_mm_embeds=True`). Only those weights are loaded.
- `qwen_encoder(model, dtype, device)`: the same for a Qwen2-VL checkpoint (seva_tasks.qwen2vl.vision),
  with this module's dtype and device rules.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from seva_tasks.llava.images import load_rgb, normalize, pad_and_resize
from seva_tasks.llava.noise import add_diffusion_noise
from seva_tasks.qwen2vl.vision import VisualEncoder

if TYPE_CHECKING:
    import torch
    from PIL import Image


class ImagePrep:
    """The model's input side and normalization, read from its processor config."""

    def __init__(self, model: Path, *, pad: bool = True):
        from transformers import AutoConfig, AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(str(model), local_files_only=True)
        self.mean, self.std = tuple(proc.image_mean), tuple(proc.image_std)
        self.size = int(AutoConfig.from_pretrained(str(model), local_files_only=True).vision_config.image_size)
        self.pad = pad

    def square(self, path: str | Path) -> Image.Image:
        """The RGB image at the model's side: padded (LLaVA-1.5) or resized + centre-cropped (CLIP)."""
        from PIL import Image

        img, s = load_rgb(Path(path)), self.size
        if self.pad:
            return pad_and_resize(img, s, self.mean)
        w, h = img.size  # CLIPImageProcessor: shortest edge -> s, then the centre s x s
        w2, h2 = (s, max(s, round(h * s / w))) if w <= h else (max(s, round(w * s / h)), s)
        img = img.resize((w2, h2), Image.BICUBIC)
        left, top = (w2 - s) // 2, (h2 - s) // 2
        return img.crop((left, top, left + s, top + s))

    def pixel_values(self, path: str | Path) -> torch.Tensor:
        """[1, 3, S, S] float32: the square image rescaled to [0, 1] and normalized."""
        import numpy as np
        import torch

        u8 = torch.from_numpy(np.array(self.square(path), dtype=np.uint8)).permute(2, 0, 1)[None]
        return normalize(u8, self.mean, self.std)

    def noised(self, path: str | Path, noise_step: int, seed: int) -> torch.Tensor:
        return add_diffusion_noise(self.pixel_values(path), noise_step, [seed])


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


# llava-hf names (`vision_tower.vision_model.*`), transformers >= 5 names (`model.vision_tower.*`)
_TOWER = re.compile(r"^(?:model\.)?vision_tower\.(?:vision_model\.)?(.+)$")
_PROJ = re.compile(r"^(?:model\.)?multi_modal_projector\.(.+)$")


def vision_device(setting: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; 'cpu'/'cuda' as asked."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("vision_device=cuda but torch sees no GPU; set generate.engine.vision_device=auto (or cpu).")
    return setting


class VisionEncoder:
    """LLaVA's image path outside the LLM: CLIP vision tower -> feature layer -> projector.

    Runs on `device` ('auto': the GPU when there is one: SeVa's ~16k noised images take hours on a
    CPU) in the preset's dtype there, and always in float32 on the CPU (half-precision CPU kernels
    are slow or missing); the embeddings are handed to vLLM on the CPU in the model's dtype.
    """

    def __init__(self, model: Path, dtype: str = "float32", device: str = "auto"):
        import torch
        from safetensors import safe_open
        from transformers import AutoConfig, AutoModel
        from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

        config = AutoConfig.from_pretrained(str(model), local_files_only=True)
        self.layer, self.strategy = config.vision_feature_layer, config.vision_feature_select_strategy
        self.out_dtype = resolve_dtype(config, dtype)
        self.device = vision_device(device)
        self.dtype = self.out_dtype if self.device != "cpu" else torch.float32
        self.tower = AutoModel.from_config(config.vision_config)
        self.projector = LlavaMultiModalProjector(config)
        tower_sd, proj_sd = {}, {}
        for name, path in _weights(model).items():
            for pattern, sd in ((_TOWER, tower_sd), (_PROJ, proj_sd)):
                if m := pattern.match(name):
                    with safe_open(str(path), "pt") as sf:
                        sd[m.group(1)] = sf.get_tensor(name)
        # CLIPVisionModel's own keys may or may not start with `vision_model.`
        prefix = "vision_model." if any(k.startswith("vision_model.") for k in self.tower.state_dict()) else ""
        self.tower.load_state_dict({prefix + k: v for k, v in tower_sd.items()}, strict=True)
        self.projector.load_state_dict(proj_sd, strict=True)
        self.tower.to(self.device, self.dtype).eval()
        self.projector.to(self.device, self.dtype).eval()

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, image_tokens, text_hidden] on the CPU (what LLaVA splices in for `<image>`)."""
        import torch

        with torch.inference_mode():
            out = self.tower(pixel_values.to(self.device, self.dtype), output_hidden_states=True)
            layers = [self.layer] if isinstance(self.layer, int) else list(self.layer)
            feats = [out.hidden_states[i] for i in layers]
            if self.strategy == "default":
                feats = [f[:, 1:] for f in feats]
            return self.projector(torch.cat(feats, dim=-1)).to("cpu", self.out_dtype)


def qwen_encoder(model: Path, dtype: str = "float32", device: str = "auto") -> VisualEncoder:
    """Qwen2-VL's visual tower + merger, placed and typed as `VisionEncoder` places LLaVA's."""
    import torch
    from transformers import AutoConfig

    out_dtype = resolve_dtype(AutoConfig.from_pretrained(str(model), local_files_only=True), dtype)
    dev = vision_device(device)
    return VisualEncoder(model, _weights(model), device=dev, dtype=out_dtype if dev != "cpu" else torch.float32,
                         out_dtype=out_dtype)
