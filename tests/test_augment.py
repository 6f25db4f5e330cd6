"""Stage `augment`: SeVa's noise schedule, seeded per-row augmentations, exact and pixel modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from seva_tasks.stages import augment
from seva_tasks.llava.noise import add_diffusion_noise, row_seed
from seva_tasks.stages.augment import REGISTRY, AugmentConfig


def ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="sigmoid", beta_start=1e-5, beta_end=5e-3)


def test_noise_schedule_equals_seva_closed_form_and_diffusers():
    s = ddpm()
    closed = torch.sigmoid(torch.linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5
    assert torch.equal(s.betas, closed)  # diffusers' sigmoid schedule is SeVa's: max |Δβ| = 0
    ab = augment.alphas_cumprod()
    assert torch.equal(ab, s.alphas_cumprod) and torch.equal(ab, torch.cumprod(1 - closed, 0))
    for t, (signal, noise) in {500: (0.863, 0.505), 800: (0.467, 0.884)}.items():
        assert round(ab[t].sqrt().item(), 3) == signal and round((1 - ab[t]).sqrt().item(), 3) == noise


def test_add_diffusion_noise_is_the_formula_with_seeded_eps():
    x = torch.rand(2, 3, 8, 8)
    out = add_diffusion_noise(x, 500, [11, 12])
    ab = augment.alphas_cumprod()[500]
    eps = torch.stack([torch.randn((3, 8, 8), generator=torch.Generator().manual_seed(s)) for s in (11, 12)])
    assert torch.allclose(out, ab.sqrt() * x + (1 - ab).sqrt() * eps, atol=1e-6)
    assert torch.equal(out, add_diffusion_noise(x, 500, [11, 12]))
    assert not torch.equal(out, add_diffusion_noise(x, 500, [11, 13]))


def test_add_diffusion_noise_equals_diffusers_add_noise_bitwise():
    x = torch.randn(3, 3, 16, 16)
    seeds, steps = [1, 2, 3], [500, 800, 17]
    eps = torch.stack([torch.randn((3, 16, 16), generator=torch.Generator().manual_seed(s)) for s in seeds])
    expect = ddpm().add_noise(x, eps, torch.tensor(steps))
    assert torch.equal(add_diffusion_noise(x, steps, seeds), expect)


def test_batched_noise_equals_per_image_noise():
    x = torch.randn(6, 3, 16, 16)
    seeds = [row_seed(0, f"r{i}") for i in range(6)]
    steps = [500, 800, 0, 999, 500, 800]
    batched = add_diffusion_noise(x, steps, seeds)
    one_by_one = torch.cat([add_diffusion_noise(x[i : i + 1], steps[i], [seeds[i]]) for i in range(6)])
    assert torch.equal(batched, one_by_one)
    channels_last = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # same values, other strides
    assert torch.equal(add_diffusion_noise(channels_last, steps, seeds), batched)


def test_row_seed_depends_on_seed_and_id_only():
    assert row_seed(0, "a:0") == row_seed(0, "a:0")
    assert len({row_seed(0, "a:0"), row_seed(1, "a:0"), row_seed(0, "a:1")}) == 3
    assert 0 <= row_seed(123, "x") < 2**63


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_each_augmentation_is_seeded_reproducible(method):
    cfg = AugmentConfig(method=method, image_size=32, mode="pixel")
    apply = augment.build(cfg)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)
    seeds = list(range(8))
    before = torch.get_rng_state()
    a, b = apply(batch, seeds), apply(batch, seeds)
    assert torch.equal(torch.get_rng_state(), before)  # torch's global RNG is left as it was
    assert a.dtype == torch.uint8 and a.shape == batch.shape
    assert torch.equal(a, b)
    if method != "center_crop":  # the one deterministic view
        assert not torch.equal(a, apply(batch, [s + 100 for s in seeds]))
    # a row's view depends on its seed, not on its batch neighbours
    assert torch.equal(apply(batch[3:4], seeds[3:4])[0], a[3])


def test_config_rejects_unknown_method_and_step():
    with pytest.raises(ValueError, match="unknown augmentation 'blur'"):
        AugmentConfig(method="blur")
    with pytest.raises(ValueError, match="less than or equal to 999"):
        AugmentConfig(noise_step=1000)


def test_load_rgb_handles_image_modes(tmp_path):
    for mode, color in {"CMYK": (0, 255, 255, 0), "L": 128, "RGBA": (10, 200, 10, 128), "P": 3, "I;16": 65535}.items():
        Image.new(mode, (5, 4), color).save(tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.jpg")
        img = augment.load_rgb(tmp_path / ("x.png" if mode != "CMYK" else "x.jpg"))
        assert img.mode == "RGB" and img.size == (5, 4)
    Image.new("I;16", (2, 2), 32896).save(tmp_path / "mid.png")  # 16-bit mid-grey is scaled, not clipped to white
    assert augment.load_rgb(tmp_path / "mid.png").getpixel((0, 0)) == (128, 128, 128)


def sample_dir(tmp_path: Path, ids: list[str], name: str = "sample") -> Path:
    """A published-looking `sample` artifact: unlabeled.parquet + manifest with the image root."""
    root = tmp_path / "images"
    d = tmp_path / name
    d.mkdir()
    for i, rid in enumerate(ids):
        p = root / "ocr_vqa" / f"{rid}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists():
            Image.new("RGB", (40 + i, 30), (20 * i % 255, 100, 200)).save(p)
    pl.DataFrame({
        "id": [f"{r}:0" for r in ids], "record_id": ids, "subset": ["ocr_vqa"] * len(ids),
        "image": [f"ocr_vqa/{r}.jpg" for r in ids], "question": ["q"] * len(ids), "turn": [0] * len(ids),
    }, schema_overrides={"turn": pl.Int32}).write_parquet(d / "unlabeled.parquet")
    (d / "manifest.json").write_text(json.dumps({"stats": {"image_root": str(root)}}))
    return d


def run(cfg, deps: Path, out: Path) -> tuple[dict, pl.DataFrame]:
    out.mkdir()
    stats = augment.run(cfg, {"sample": deps}, out)
    return stats, pl.read_parquet(out / augment.OUTPUT)


def test_exact_mode_writes_the_recipe_only(tmp_path):
    deps = sample_dir(tmp_path, ["a", "b", "c"])
    stats, df = run(AugmentConfig(noise_step=800, seed=4), deps, tmp_path / "o1")
    assert df.columns == ["id", "record_id", "subset", "image", "question", "turn",
                          "augmentation", "mode", "noise_step", "aug_seed", "aug_image"]
    assert df["noise_step"].to_list() == [800] * 3 and df["aug_image"].null_count() == 3
    assert df["aug_seed"].to_list() == [row_seed(4, i) for i in df["id"]]
    assert stats["counts"] == {"rows_in": 3, "rows": 3} and stats["subsets"] == {"ocr_vqa": 3}
    assert stats["mode"] == "exact" and stats["drops"] == {}
    assert not (tmp_path / "o1" / "images").exists()
    run(AugmentConfig(noise_step=800, seed=4), deps, tmp_path / "o2")
    assert (tmp_path / "o1" / augment.OUTPUT).read_bytes() == (tmp_path / "o2" / augment.OUTPUT).read_bytes()


def test_pixel_mode_is_reproducible_and_matches_noised_pixel_values(tmp_path):
    deps = sample_dir(tmp_path, ["a", "b", "c", "d", "e"])
    cfg = AugmentConfig(mode="pixel", image_size=24, batch_size=2)
    _, df = run(cfg, deps, tmp_path / "o1")
    run(cfg, deps, tmp_path / "o2")
    _, other = run(cfg.model_copy(update={"seed": 1}), deps, tmp_path / "o3")
    files = sorted(p.relative_to(tmp_path / "o1") for p in (tmp_path / "o1").rglob("*") if p.is_file())
    assert len(files) == 6
    for f in files:
        assert (tmp_path / "o1" / f).read_bytes() == (tmp_path / "o2" / f).read_bytes()
    row = df.row(1, named=True)
    png = np.asarray(Image.open(tmp_path / "o1" / row["aug_image"]))
    assert png.shape == (24, 24, 3)
    assert (png != np.asarray(Image.open(tmp_path / "o3" / other.row(1, named=True)["aug_image"]))).any()
    # the PNG is SeVa's normalized-space noise, de-normalized, clipped and rounded
    x = augment.noised_pixel_values(augment.load_rgb(tmp_path / "images" / row["image"]), size=24,
                                    noise_step=500, seed=row["aug_seed"])[0]
    m, s = torch.tensor(augment.CLIP_MEAN).view(3, 1, 1), torch.tensor(augment.CLIP_STD).view(3, 1, 1)
    expect = (x * s + m).clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.abs(png.astype(int) - expect.astype(int)).max() <= 1


def test_a_rows_output_does_not_depend_on_the_other_rows(tmp_path):
    cfg = AugmentConfig(method="simclr", image_size=24, batch_size=3)
    _, full = run(cfg, sample_dir(tmp_path, ["a", "b", "c", "d"]), tmp_path / "o1")
    _, part = run(cfg, sample_dir(tmp_path, ["d", "b"], "sample2"), tmp_path / "o2")
    for rid in ("b:0", "d:0"):
        f, p = full.filter(id=rid).row(0, named=True), part.filter(id=rid).row(0, named=True)
        assert f["aug_seed"] == p["aug_seed"]
        assert (tmp_path / "o1" / f["aug_image"]).read_bytes() == (tmp_path / "o2" / p["aug_image"]).read_bytes()


def test_unreadable_image_is_dropped_and_counted(tmp_path):
    deps = sample_dir(tmp_path, ["a", "b"])
    (tmp_path / "images" / "ocr_vqa" / "b.jpg").write_bytes(b"")
    stats, df = run(AugmentConfig(method="hflip", image_size=16), deps, tmp_path / "o")
    assert stats["drops"] == {"image_unreadable": 1} and df["id"].to_list() == ["a:0"]
