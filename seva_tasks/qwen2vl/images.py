"""Qwen2-VL's image path and SeVa's exact noise on it.

The processor resizes each image to a multiple of patch·merge within [min_pixels, max_pixels]
(`smart_resize`), normalizes it, repeats it over `temporal_patch_size` frames and patchifies it into
`pixel_values` [patches, C·T·P·P] with `image_grid_thw` [1, 3]. SeVa adds x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε
to the normalized image the vision tower reads (LLaVA: the padded 336-px tensor); here that tensor is
the processor's `pixel_values`. ε is drawn per image pixel and shared by the temporal copies of a
pixel: the copies are one frame, and independent ε per copy would be averaged by the Conv3d patch
embedding, halving the noise's variance (weaker noise than SeVa's).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from seva_tasks.llava.images import load_rgb
from seva_tasks.llava.noise import add_diffusion_noise

if TYPE_CHECKING:
    import torch
    from PIL import Image


def exact_noise(pixel_values: torch.Tensor, *, channels: int, temporal: int, patch: int, noise_step: int,
                seed: int) -> torch.Tensor:
    """One image's `pixel_values` [patches, C·T·P·P] with SeVa's noise (seva_tasks.llava.noise) on its pixels.

    ε has the shape of one frame ([patches, C, P, P], drawn from `seed`) and is repeated over the T copies.
    """
    x = pixel_values.view(pixel_values.shape[0], channels, temporal, patch, patch)
    frame = x[:, :, 0]
    if not bool((x == frame[:, :, None]).all()):
        raise ValueError("pixel_values' temporal copies differ: this is a video, not an image; exact noise is for images.")
    noised = add_diffusion_noise(frame[None], noise_step, [seed])[0]
    return noised[:, :, None].expand_as(x).reshape(pixel_values.shape)


class ImageInputs:
    """The model's image processor (read from its preprocessor config) and the exact-noise recipe."""

    def __init__(self, model: Path):
        from transformers import AutoImageProcessor

        self.processor = AutoImageProcessor.from_pretrained(str(model), local_files_only=True)
        p = self.processor
        self.patch, self.temporal, self.merge = int(p.patch_size), int(p.temporal_patch_size), int(p.merge_size)
        max_pixels = p.size["longest_edge"] if p.size.get("longest_edge") else p.max_pixels
        self.max_image_tokens = int(max_pixels) // (self.patch * self.merge) ** 2  # smart_resize's upper bound

    def image_tokens(self, path: str | Path | None) -> int:
        """Tokens the image occupies once its placeholder is expanded (its smart_resize's merged patches,
        from the file's header); max_image_tokens when there is no path or it does not open (the engine
        then drops the row as unreadable)."""
        from PIL import Image

        if path is None:
            return self.max_image_tokens
        try:
            with Image.open(path) as im:
                w, h = im.size
        except (OSError, ValueError):
            return self.max_image_tokens
        return self.processor.get_number_of_image_patches(h, w) // self.merge**2

    def image(self, path: str | Path) -> Image.Image:
        """The RGB image as the processor (and vLLM's) receives it: no padding, no resize here."""
        return load_rgb(Path(path))

    def pixel_values(self, path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values [patches, C·T·P·P] float32, image_grid_thw [1, 3]) of one image."""
        enc = self.processor(images=[self.image(path)], return_tensors="pt")
        return enc["pixel_values"], enc["image_grid_thw"]

    def noise(self, pixel_values: torch.Tensor, noise_step: int, seed: int) -> torch.Tensor:
        """`exact_noise` with this processor's patch layout."""
        return exact_noise(pixel_values, channels=pixel_values.shape[1] // (self.temporal * self.patch ** 2),
                           temporal=self.temporal, patch=self.patch, noise_step=noise_step, seed=seed)

    def noised(self, path: str | Path, noise_step: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(noised pixel_values, image_grid_thw) of one image."""
        pv, grid = self.pixel_values(path)
        return self.noise(pv, noise_step, seed), grid
