"""The visual tower + merger of a Qwen2-VL checkpoint, alone: noised `pixel_values` -> the image
embeddings vLLM's Qwen2-VL accepts as `{"image_embeds": emb, "image_grid_thw": grid}` (with
`enable_mm_embeds=True`). Only the `visual.*` weights are read.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# architecture -> its vision transformer class (transformers' module, class name)
VISUAL = {
    "Qwen2VLForConditionalGeneration": ("transformers.models.qwen2_vl.modeling_qwen2_vl",
                                        "Qwen2VisionTransformerPretrainedModel"),
    "Qwen2_5_VLForConditionalGeneration": ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl",
                                           "Qwen2_5_VisionTransformerPretrainedModel"),
}
# transformers >= 5 saves `model.visual.*`; Qwen's own checkpoints hold `visual.*`
_VISUAL = re.compile(r"^(?:model\.)?visual\.(.+)$")


class VisualEncoder:
    """Qwen2-VL's `visual` module with the checkpoint's weights, on `device` in `dtype`."""

    def __init__(self, model: Path, weights: dict[str, Path], *, device: str, dtype, out_dtype):
        """`weights`: tensor name -> safetensors file of the checkpoint (seva_tasks.engines.vision)."""
        from safetensors import safe_open
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(model), local_files_only=True)
        module, name = VISUAL[config.architectures[0]]
        self.visual = getattr(importlib.import_module(module), name)._from_config(config.vision_config)
        state = {}
        for key, path in weights.items():
            if m := _VISUAL.match(key):
                with safe_open(str(path), "pt") as sf:
                    state[m.group(1)] = sf.get_tensor(key)
        self.visual.load_state_dict(state, strict=True)
        self.visual.to(device, dtype).eval()
        self.device, self.dtype, self.out_dtype = device, dtype, out_dtype
        self.merge = int(config.vision_config.spatial_merge_size)

    def __call__(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """Images' concatenated pixel_values + their grids [n, 3] -> one [tokens, text_hidden] per image, on the CPU."""
        import torch

        with torch.inference_mode():
            out = self.visual(pixel_values.to(self.device, self.dtype), grid_thw=grid_thw.to(self.device))
            emb = out.pooler_output if hasattr(out, "pooler_output") else out  # transformers < 5 returned the tensor
            sizes = (grid_thw.prod(-1) // self.merge**2).tolist()
            return [e.to("cpu", self.out_dtype) for e in torch.split(emb, sizes)]
