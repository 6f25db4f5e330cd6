"""LLaVA-1.5's image path for SeVa's exact noise: the padded, CLIP-normalized square tensor, and the
vision tower + projector that turn it into the embeddings vLLM's LLaVA accepts.

- `ImagePrep.square(path)`: `expand2square(img, mean·255)` then a bicubic resize to the model's side,
  which is what LLaVA's `process_images(..., image_aspect_ratio="pad")` feeds CLIP (the processor's
  own resize + centre crop of a square at that side is then a no-op).
- `ImagePrep.noised(path, step, seed)`: that image CLIP-normalized, plus SeVa's diffusion noise
  x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε with ε ~ N(0, 1) drawn from `seed` (seva_tasks.llava.noise).
- `ProjectedTower`: noised pixel values -> (1, image_tokens, text_hidden) embeddings, i.e. the
  vision tower's penultimate layer (CLS dropped) through the projector, which vLLM's LLaVA accepts
  as `multi_modal_data={"image": embeds}` (`enable_mm_embeds=True`). Only those weights are loaded.

Imported by the engine env too: only torch, numpy, PIL, transformers, safetensors here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from seva_tasks.llava.images import load_rgb, normalize, pad_and_resize
from seva_tasks.llava.noise import add_diffusion_noise

if TYPE_CHECKING:
    import torch
    from PIL import Image

# llava-hf names (`vision_tower.vision_model.*`), transformers >= 5 names (`model.vision_tower.*`)
_TOWER = re.compile(r"^(?:model\.)?vision_tower\.(?:vision_model\.)?(.+)$")
_PROJ = re.compile(r"^(?:model\.)?multi_modal_projector\.(.+)$")


def image_tokens(config) -> int:
    """Tokens one image occupies in a LLaVA prompt: (side / patch)^2, plus CLS with strategy 'full'."""
    v = config.vision_config
    n = (v.image_size // v.patch_size) ** 2
    return n + (1 if getattr(config, "vision_feature_select_strategy", "default") == "full" else 0)


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


class ProjectedTower:
    """LLaVA's image path outside the LLM: CLIP vision tower -> feature layer -> projector, on `device`
    in `dtype`, returning `out_dtype` on the CPU (placement: seva_tasks.engines.vision.llava_encoder)."""

    def __init__(self, model: Path, weights: dict[str, Path], *, device: str, dtype, out_dtype):
        """`weights`: tensor name -> safetensors file of the checkpoint (seva_tasks.engines.vision)."""
        from safetensors import safe_open
        from transformers import AutoConfig, AutoModel
        from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

        config = AutoConfig.from_pretrained(str(model), local_files_only=True)
        self.layer, self.strategy = config.vision_feature_layer, config.vision_feature_select_strategy
        self.device, self.dtype, self.out_dtype = device, dtype, out_dtype
        self.tower = AutoModel.from_config(config.vision_config)
        self.projector = LlavaMultiModalProjector(config)
        tower_sd, proj_sd = {}, {}
        for name, path in weights.items():
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
