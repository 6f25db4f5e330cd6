"""LLaVA-1.5's image path: load as RGB, pad to a square of the mean colour, bicubic resize, CLIP-normalize.

`square_tensor` + `normalize` are what llava-hf's processor does with `image_aspect_ratio=pad`;
every stage that needs those pixels (augment, filter, pretrain, the exact-noise vision encoder) calls these.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def expand2square(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """LLaVA's pad-to-square: centre the image on a square of `background` colour."""
    from PIL import Image

    w, h = img.size
    if w == h:
        return img
    out = Image.new(img.mode, (max(w, h),) * 2, background)
    out.paste(img, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
    return out


def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB the way LLaVA does (`convert("RGB")`), but scale 16-bit grey to 8 bits first."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # convert() would clip 16-bit values at 255
            arr = np.asarray(im).astype(np.float32) / 257.0
            im = Image.fromarray(arr.clip(0, 255).round().astype(np.uint8), "L")
        return im.convert("RGB")


def pad_and_resize(img: Image.Image, size: int, mean: Sequence[float]) -> Image.Image:
    """LLaVA-1.5's `image_aspect_ratio=pad`: pad to a square of the mean colour, bicubic resize to `size`."""
    from PIL import Image

    img = expand2square(img, tuple(int(m * 255) for m in mean))
    return img if img.size == (size, size) else img.resize((size, size), Image.BICUBIC)


def square_tensor(img: Image.Image, size: int, mean: Sequence[float]) -> torch.Tensor:
    """uint8 [3, size, size]: `pad_and_resize` as a tensor."""
    import numpy as np
    import torch

    return torch.from_numpy(np.array(pad_and_resize(img, size, mean), dtype=np.uint8)).permute(2, 0, 1)


def normalize(u8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float, CLIP-normalized (what the processor hands the vision tower)."""
    import torch

    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (u8.float() / 255 - m) / s
