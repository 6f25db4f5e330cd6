"""SeVa's diffusion noise (`data/step2/generate_with_aug.py`, reference/seva-recipe.md §1b).

T=1000, betas = sigmoid(linspace(-6, 6, 1000))·(5e-3 − 1e-5) + 1e-5, x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε: bitwise
diffusers' `DDPMScheduler(beta_schedule="sigmoid", ...)` and its `add_noise` (tests/test_augment.py).
ε comes from a per-row seed (`row_seed`), so a row's noise does not depend on order or batching.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

from seva_tasks.llava.images import CLIP_MEAN, CLIP_STD, normalize, square_tensor

if TYPE_CHECKING:
    import torch
    from PIL import Image

T = 1000  # diffusion steps


@lru_cache(maxsize=1)
def alphas_cumprod() -> torch.Tensor:
    """ᾱ_t, t = 0..999, from SeVa's closed form.

    Bitwise equal to diffusers' `DDPMScheduler(num_train_timesteps=1000, beta_schedule="sigmoid",
    beta_start=1e-5, beta_end=5e-3).alphas_cumprod` (tests/test_augment.py checks it). Computed here
    rather than imported because diffusers costs ~4 s to import and need not be installed where
    generate rebuilds the noise (e.g. the engine env).
    """
    import torch

    betas = torch.sigmoid(torch.linspace(-6, 6, T)) * (5e-3 - 1e-5) + 1e-5
    return torch.cumprod(1.0 - betas, dim=0)


def row_seed(seed: int, row_id: str) -> int:
    """A row's augmentation seed: a hash of (config seed, row id), independent of row order; < 2**63."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{row_id}".encode()).digest()[:8], "big") >> 1


def add_diffusion_noise(x0: torch.Tensor, noise_step: int | Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
    """SeVa's `add_diffusion_noise` on a batch [B, ...] with ε for row i drawn from `seeds[i]`.

    This is what the generate stage calls in exact mode, on the `pixel_values` of the model's own
    processor (pad-to-square, CLIP-normalized, as SeVa): `add_diffusion_noise(pv, row.noise_step,
    [row.aug_seed])`. Row i's result does not depend on the other rows (batched == one by one).
    """
    import torch

    steps = [noise_step] * len(seeds) if isinstance(noise_step, int) else list(noise_step)
    if len(seeds) != x0.shape[0] or len(steps) != x0.shape[0]:
        raise ValueError(f"need one seed and step per row: {x0.shape[0]} rows, {len(seeds)} seeds, {len(steps)} steps")
    x = x0.float()
    # ε is drawn on the CPU (same noise whatever device x lives on), into a contiguous buffer:
    # randn(out=) fills in memory order, so a buffer with x's strides would permute the noise.
    noise, gen = torch.empty(x.shape), torch.Generator()
    for i, s in enumerate(seeds):  # the row's ε is fixed by its seed alone; the RNG cannot be shared
        gen.manual_seed(s)
        torch.randn(x.shape[1:], generator=gen, out=noise[i])
    # DDPMScheduler.add_noise's arithmetic (√ᾱ·x0 + √(1−ᾱ)·ε, same float32 roundings; a test checks
    # bitwise equality) done in place: add_noise allocates three batch-sized temporaries.
    ab = alphas_cumprod()[torch.tensor(steps, dtype=torch.long)].view(-1, *[1] * (x.dim() - 1)).to(x.device)
    out = torch.mul(x, ab**0.5)
    return out.add_(noise.to(x.device).mul_((1 - ab) ** 0.5)).to(x0.dtype)


def noised_pixel_values(image: Image.Image, *, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                        size: int = 336, noise_step: int, seed: int) -> torch.Tensor:
    """[1, 3, size, size] float: `image` padded, resized, normalized and noised as SeVa, without a processor.

    Prefer the model's own processor + `add_diffusion_noise` in generate; this is the same recipe for
    code that has no processor (and what pixel mode renders before clipping).
    """
    x = normalize(square_tensor(image, size, mean)[None], mean, std)
    return add_diffusion_noise(x, noise_step, [seed])
