"""What the train stage needs to know about a Qwen2-VL checkpoint's modules and weight names.

The merger (Qwen2-VL's `PatchMerger`: 2×2 patches -> an MLP -> the text hidden size) is the
counterpart of LLaVA-1.5's projector, so SeVa's recipe trains it in full (`modules_to_save`)
while the rest of the visual tower stays frozen.

transformers >= 5 saves `model.visual.*`, `model.language_model.*`, `lm_head.*`; vLLM 0.32's
`qwen2_vl.py` maps these names as well as Qwen's original `visual.*` / `model.*` ones, so a merged
model is served as transformers saved it (tests/test_qwen2vl.py loads one in vLLM).
"""

from __future__ import annotations

from pathlib import Path

PROJECTOR = "merger"  # `model.visual.merger` in transformers 5, `visual.merger` in Qwen's files


def for_serving(model_dir: Path) -> int:
    """Nothing to rename for vLLM (see the module docstring); returns 0 renames."""
    return 0
