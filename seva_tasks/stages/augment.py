"""Stage `augment`: one augmented view (or the recipe for it) per unlabeled row -> `augmented.parquet`.

    seva run --until augment                                  # this stage and `sample`
    seva run --until augment augment.noise_step=800           # SeVa's stronger noise
    seva run --until augment augment.mode=pixel               # noised PNGs instead of a recipe
    seva run --until augment augment.method=moco_v2           # a torchvision augmentation

Diffusion noise is SeVa's (`data/step2/generate_with_aug.py`, reference/seva-recipe.md §1b): T=1000,
betas = sigmoid(linspace(-6, 6, 1000))·(5e-3 − 1e-5) + 1e-5, x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, which is
bitwise diffusers' `DDPMScheduler(beta_schedule="sigmoid", ...)` and its `add_noise` (tested; the
closed form is computed here so the noise needs only torch, see `alphas_cumprod`). SeVa draws ε
unseeded; here ε comes from a per-row seed, `row_seed(seed, id)` (a hash of the config seed and the
row id, so it does not depend on row order or batching).

Modes of `method: diffusion`:
- `exact` (SeVa): the noise goes on the CLIP-normalized, pad-to-square pixel tensor the model's own
  processor makes, so nothing is rendered here; the rows carry the recipe (`noise_step`, `aug_seed`)
  and the generate stage rebuilds the tensor with `add_diffusion_noise(pixel_values, noise_step, seeds)`.
- `pixel`: the same noise in the same normalized space (`image_mean`/`image_std`) on the image padded
  to a square and resized to `image_size`, then mapped back to [0, 1], clipped and saved as an 8-bit
  PNG. It differs from `exact` only by that clipping and rounding, and any engine can read it.
The torchvision augmentations (REGISTRY) always produce PNGs at `image_size` from the same square image.

Output: every unlabeled column plus augmentation, mode, noise_step (null unless diffusion), aug_seed,
aug_image (PNG path inside this artifact, null in exact mode), and `images/*.png`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from seva_tasks.artifacts import AUGMENTED, UNLABELED, image_root
from seva_tasks.base import StageConfig
from seva_tasks.llava.images import CLIP_MEAN, CLIP_STD, load_rgb, normalize, square_tensor
from seva_tasks.llava.noise import add_diffusion_noise, row_seed
from seva_tasks.errors import InputError
from seva_tasks.progress import track

if TYPE_CHECKING:
    import torch
    from PIL import Image

OUTPUT = AUGMENTED
log = logging.getLogger(__name__)


class AugmentConfig(StageConfig):
    """Settings of the `augment` stage.

    Args: see each field's description. Defaults are the paper's (diffusion noise, step 500, exact).
    """

    method: str = Field("diffusion", description="Augmentation: 'diffusion' (SeVa) or a torchvision one from augment.REGISTRY.")
    mode: Literal["exact", "pixel"] = Field("exact", description="Diffusion only: noise the model's normalized tensor (exact, SeVa) or save noised PNGs (pixel).")
    noise_step: int = Field(500, ge=0, le=999, description="Diffusion step t of T=1000 (paper: 500, or 800 for SeVa-7B).")
    seed: int = Field(0, description="Seed of the per-row noise and augmentation parameters (SeVa's were unseeded).")
    image_size: int = Field(336, ge=8, description="Side of the square PNGs (LLaVA-1.5's CLIP input: 336).")
    image_mean: tuple[float, float, float] = Field(CLIP_MEAN, description="Normalization mean for pixel-mode noise and the pad colour (CLIP's).")
    image_std: tuple[float, float, float] = Field(CLIP_STD, description="Normalization std for pixel-mode noise (CLIP's).")
    batch_size: int = Field(32, ge=1, description="Images decoded, augmented and written per batch.")

    @field_validator("method")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in REGISTRY:
            raise ValueError(f"unknown augmentation {v!r}; choose one of: {', '.join(REGISTRY)}")
        return v


def _diffusion(cfg: AugmentConfig) -> Callable:
    """Pixel mode: noise a uint8 batch in normalized space, map back, clip, round."""
    import torch

    m, s = torch.tensor(cfg.image_mean).view(1, 3, 1, 1), torch.tensor(cfg.image_std).view(1, 3, 1, 1)

    def apply(batch: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        noisy = add_diffusion_noise(normalize(batch, cfg.image_mean, cfg.image_std), cfg.noise_step, seeds)
        return (noisy * s + m).clamp_(0, 1).mul_(255).round_().to(torch.uint8)

    return apply


# --- torchvision augmentations ------------------------------------------------------------------

def _torchvision(make: Callable) -> Callable:
    """Builder for a torchvision v2 transform applied row by row, each under its own seed.

    Per-row parameters (crop box, jitter, ...) need a per-row RNG state, which v2 transforms take
    only from torch's global generator: it is seeded per row and restored after the batch.
    """

    def build(cfg: AugmentConfig) -> Callable:
        import torch
        from torchvision.transforms import v2

        t = make(v2, cfg.image_size, tuple(int(m * 255) for m in cfg.image_mean))

        def apply(batch: torch.Tensor, seeds: list[int]) -> torch.Tensor:
            state, threads = torch.get_rng_state(), torch.get_num_threads()
            torch.set_num_threads(1)  # one small image per call: intra-op threads cost more than they give (5x here)
            try:
                out = []
                for img, seed in zip(batch, seeds):
                    torch.manual_seed(seed)
                    out.append(t(img))
                return torch.stack(out)
            finally:  # leave torch's global RNG and threads as we found them
                torch.set_rng_state(state)
                torch.set_num_threads(threads)

        return apply

    return build


def _blur(v2, size: int, p: float):
    k = int(0.1 * size) // 2 * 2 + 1  # SimCLR/BYOL: kernel 10% of the side (23 at 224), odd
    return v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, 2.0))], p=p)


# Crops end in a resize to `size`, so every view is size×size (the square the model sees).
REGISTRY: dict[str, Callable[[AugmentConfig], Callable]] = {
    "diffusion": _diffusion,
    "hflip": _torchvision(lambda v2, size, fill: v2.RandomHorizontalFlip(p=0.5)),
    "random_resized_crop": _torchvision(lambda v2, size, fill: v2.RandomResizedCrop(size, antialias=True)),
    "random_crop": _torchvision(lambda v2, size, fill: v2.Compose([v2.RandomCrop(size * 3 // 4), v2.Resize((size, size), antialias=True)])),
    "center_crop": _torchvision(lambda v2, size, fill: v2.Compose([v2.CenterCrop(size * 3 // 4), v2.Resize((size, size), antialias=True)])),
    "affine": _torchvision(lambda v2, size, fill: v2.RandomAffine(degrees=30, translate=(0.1, 0.1), scale=(0.8, 1.2), shear=10, fill=list(fill))),
    "invert": _torchvision(lambda v2, size, fill: v2.RandomInvert(p=0.5)),
    "autoaugment": _torchvision(lambda v2, size, fill: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, fill=list(fill))),
    # MoCo v2 (facebookresearch/moco `augmentation` with --aug-plus)
    "moco_v2": _torchvision(lambda v2, size, fill: v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2), _blur(v2, size, 0.5), v2.RandomHorizontalFlip()])),
    # BYOL, first view (Grill et al. 2020, Table 6: blur always, no solarize)
    "byol": _torchvision(lambda v2, size, fill: v2.Compose([
        v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2), _blur(v2, size, 1.0)])),
    # SimCLR (Chen et al. 2020, strength s=1)
    "simclr": _torchvision(lambda v2, size, fill: v2.Compose([
        v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
        v2.RandomGrayscale(p=0.2), _blur(v2, size, 0.5)])),
}


def build(cfg: AugmentConfig) -> Callable[[torch.Tensor, list[int]], torch.Tensor]:
    """The augmentation of `cfg`: (uint8 [B, 3, S, S], per-row seeds) -> uint8 [B, 3, S, S]."""
    return REGISTRY[cfg.method](cfg)


# --- the stage ------------------------------------------------------------------------------------

def _load(root: Path, rel: str, cfg: AugmentConfig) -> torch.Tensor | None:
    """The row's square uint8 image, or None if it no longer opens (sample checked it once)."""
    from PIL import Image

    try:
        return square_tensor(load_rgb(root / rel), cfg.image_size, cfg.image_mean)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def _save(u8: torch.Tensor, path: Path) -> None:
    from PIL import Image

    # compress_level 1: noised images barely compress, so higher levels only cost time
    Image.fromarray(u8.permute(1, 2, 0).numpy()).save(path, format="PNG", compress_level=1)


def _render(df, cfg: AugmentConfig, root: Path, out_dir: Path, drops: Counter) -> list[str | None]:
    """Augment every row's image in batches and save PNGs; returns each row's PNG path (None = dropped)."""
    import torch

    apply = build(cfg)
    (out_dir / "images").mkdir()
    ids, images, seeds = df["id"].to_list(), df["image"].to_list(), df["aug_seed"].to_list()
    names: list[str | None] = []
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decode/resize/encode release the GIL
        for lo in track(range(0, len(ids), cfg.batch_size), desc="augment: render", every=1):
            hi = min(lo + cfg.batch_size, len(ids))
            cache = {rel: pool.submit(_load, root, rel, cfg) for rel in dict.fromkeys(images[lo:hi])}
            loaded = [cache[rel].result() for rel in images[lo:hi]]
            ok = [i for i, t in enumerate(loaded) if t is not None]
            if len(ok) < len(loaded):
                drops["image_unreadable"] += len(loaded) - len(ok)
            out = apply(torch.stack([loaded[i] for i in ok]), [seeds[lo + i] for i in ok]) if ok else []
            batch_names: list[str | None] = [None] * (hi - lo)
            for j, i in enumerate(ok):
                batch_names[i] = f"images/{hashlib.sha256(ids[lo + i].encode()).hexdigest()[:20]}.png"
            list(pool.map(lambda j_i: _save(out[j_i[0]], out_dir / batch_names[j_i[1]]), enumerate(ok)))
            names += batch_names
    return names


def run(cfg: AugmentConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    """Augment every row of `sample`'s `unlabeled.parquet` into `out_dir/augmented.parquet` (+ PNGs).

    Args:
        cfg: the stage config. inputs: {"sample": the sample artifact dir}. out_dir: where to write.
    Returns:
        Manifest stats: counts (rows in/out), per-subset rows, drops (reason -> rows), mode,
        image_root (the clean images' root, from sample), seconds.
    """
    import polars as pl


    t0 = time.perf_counter()
    src = Path(inputs["sample"]) / UNLABELED
    try:
        df = pl.read_parquet(src)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise InputError(f"{src}: cannot read the sample output ({e}). Rerun `seva run --until sample --refresh sample`.") from e
    rows_in, root = df.height, image_root(inputs["sample"])
    diffusion = cfg.method == "diffusion"
    exact = diffusion and cfg.mode == "exact"
    df = df.with_columns(
        augmentation=pl.lit(cfg.method),
        mode=pl.lit("exact" if exact else "pixel"),
        noise_step=pl.lit(cfg.noise_step if diffusion else None, dtype=pl.Int32),
        aug_seed=pl.Series([row_seed(cfg.seed, i) for i in df["id"]], dtype=pl.Int64),
    )
    drops: Counter = Counter()
    if exact:  # nothing to render: generate rebuilds the noised tensor from (noise_step, aug_seed)
        df = df.with_columns(aug_image=pl.lit(None, dtype=pl.String))
    else:
        names = _render(df, cfg, root, out_dir, drops)
        df = df.with_columns(aug_image=pl.Series(names, dtype=pl.String)).filter(pl.col("aug_image").is_not_null())
    if df.is_empty():
        raise InputError(f"{src}: no row could be augmented (drops: {dict(drops)}). Check the images under the sample's image_root.")
    df.write_parquet(out_dir / OUTPUT, compression="zstd")
    log.info("Augmented %s/%s rows with %s (%s) → %s", f"{df.height:,}", f"{rows_in:,}", cfg.method,
             "exact-mode recipe" if exact else "PNGs", out_dir / OUTPUT)
    return {
        "counts": {"rows_in": rows_in, "rows": df.height},
        "subsets": dict(df.group_by("subset").len().sort("subset").iter_rows()),
        "drops": dict(sorted(drops.items())),
        "mode": "exact" if exact else "pixel",
        "image_root": str(root),  # what the `image` column (the clean images) is relative to
        "seconds": {"total": round(time.perf_counter() - t0, 3)},
    }
