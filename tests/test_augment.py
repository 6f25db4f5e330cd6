"""Stage `augment`: SeVa's noise schedule, seeded per-row augmentations, exact and pixel modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image

from seva_tasks.llava.images import CLIP_MEAN, CLIP_STD, load_rgb
from seva_tasks.llava.noise import noised_pixel_values, row_seed
from seva_tasks.stages import augment
from seva_tasks.stages.augment import REGISTRY, AugmentConfig


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
    x = noised_pixel_values(load_rgb(tmp_path / "images" / row["image"]), size=24,
                                    noise_step=500, seed=row["aug_seed"])[0]
    m, s = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
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
