"""P6: diffusion-noise augmentation, batched (the augment stage) vs a per-image loop (SeVa's way).

Same inputs on both sides: N seeded 640x480 JPEGs (COCO-like size) and the same rows.
- stage, pixel mode: `augment.run(mode=pixel)` — threaded decode, batches of `batch_size` noised in one
  tensor op, threaded PNG writes — vs a loop doing, per image, the same primitives (`load_rgb`,
  `square_tensor`, normalize) with SeVa's `add_diffusion_noise` verbatim (schedule rebuilt per call,
  `randn_like` on the global RNG), then the same uint8 mapping and PNG write.
- noise only: `augment.add_diffusion_noise` on the [N, 3, 336, 336] normalized batch (per-row seeded ε)
  vs SeVa's function called once per image on the same tensors.
Both in this process, interleaved, after a warm-up; wall time by perf_counter.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path


def seva_add_diffusion_noise(image_tensor, noise_step):
    """SeVa's `add_diffusion_noise` (data/step2/generate_with_aug.py, = VCD's), verbatim."""
    import torch

    num_steps = 1000  # Number of diffusion steps
    betas = torch.linspace(-6, 6, num_steps)
    betas = torch.sigmoid(betas) * (0.5e-2 - 1e-5) + 1e-5
    alphas = 1 - betas
    alphas_prod = torch.cumprod(alphas, dim=0)
    alphas_prod_p = torch.cat([torch.tensor([1]).float(), alphas_prod[:-1]], 0)  # noqa: F841
    alphas_bar_sqrt = torch.sqrt(alphas_prod)
    one_minus_alphas_bar_log = torch.log(1 - alphas_prod)  # noqa: F841
    one_minus_alphas_bar_sqrt = torch.sqrt(1 - alphas_prod)

    def q_x(x_0, t):
        noise = torch.randn_like(x_0)
        alphas_t = alphas_bar_sqrt[t]
        alphas_1_m_t = one_minus_alphas_bar_sqrt[t]
        return alphas_t * x_0 + alphas_1_m_t * noise

    noise_delta = int(noise_step)  # noqa: F841
    noisy_image = image_tensor.clone()
    image_tensor_cd = q_x(noisy_image, noise_step)
    return image_tensor_cd


def make_inputs(work: Path, n: int) -> Path:
    """A fake published `sample` artifact: n rows over n seeded 640x480 JPEGs."""
    import random

    import polars as pl
    from PIL import Image, ImageDraw

    d = work / f"p6-inputs-{n}"
    if (d / "manifest.json").is_file():
        return d
    shutil.rmtree(d, ignore_errors=True)
    (d / "images").mkdir(parents=True)
    rng, names = random.Random(0), []
    for i in range(n):
        img = Image.new("RGB", (640, 480), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x, y = rng.randrange(600), rng.randrange(440)
            draw.ellipse((x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 200)), fill=tuple(rng.randrange(256) for _ in range(3)))
        names.append(f"coco/train2017/{i:012d}.jpg")
        (d / "images" / names[-1]).parent.mkdir(parents=True, exist_ok=True)
        img.save(d / "images" / names[-1], quality=90)
    pl.DataFrame({"id": [f"r{i}:0" for i in range(n)], "record_id": [f"r{i}" for i in range(n)], "subset": ["coco"] * n,
                  "image": names, "question": ["What is this?"] * n, "turn": [0] * n},
                 schema_overrides={"turn": pl.Int32}).write_parquet(d / "unlabeled.parquet")
    (d / "manifest.json").write_text(json.dumps({"stats": {"image_root": str(d / "images")}}))
    return d


def per_image_loop(sample_dir: Path, out: Path, size: int, step: int) -> None:
    """The anchor: one image at a time, SeVa's noise function, same primitives and PNG settings."""
    import polars as pl
    import torch

    from seva_tasks.llava.images import CLIP_MEAN, CLIP_STD, load_rgb, normalize, square_tensor
    from seva_tasks.llava.noise import add_diffusion_noise
    from seva_tasks.stages import augment as A

    root = Path(json.loads((sample_dir / "manifest.json").read_text())["stats"]["image_root"])
    m, s = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    (out / "images").mkdir(parents=True)
    torch.manual_seed(0)
    for i, rel in enumerate(pl.read_parquet(sample_dir / "unlabeled.parquet")["image"]):
        x = normalize(square_tensor(load_rgb(root / rel), size, CLIP_MEAN)[None], CLIP_MEAN, CLIP_STD)
        u8 = (seva_add_diffusion_noise(x, step) * s + m).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
        A._save(u8[0], out / "images" / f"{i}.png")


def bench(work: Path, *, n: int, runs: int) -> list[dict]:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from common import row, summary

    from seva_tasks.llava.images import CLIP_MEAN, CLIP_STD, load_rgb, normalize, square_tensor
    from seva_tasks.llava.noise import add_diffusion_noise
    from seva_tasks.stages import augment as A

    sample_dir = make_inputs(work, n)
    cfg = A.AugmentConfig(mode="pixel", image_size=336, noise_step=500)
    out = work / "p6-out"

    def stage() -> None:
        A.run(cfg, {"sample": sample_dir}, out)

    def loop() -> None:
        per_image_loop(sample_dir, out, cfg.image_size, cfg.noise_step)

    stage_t, loop_t = _alternate(stage, loop, out, runs, "stage")
    root = sample_dir / "images"
    x = torch.cat([normalize(square_tensor(load_rgb(root / p.relative_to(root)), 336, CLIP_MEAN)[None], CLIP_MEAN, CLIP_STD)
                   for p in sorted(root.rglob("*.jpg"))])
    seeds = list(range(x.shape[0]))
    noise_b, noise_l = _alternate(lambda: add_diffusion_noise(x, 500, seeds),
                                  lambda: [seva_add_diffusion_noise(x[i : i + 1], 500) for i in range(x.shape[0])], None, max(runs, 3), "op")
    med = lambda v: summary(v)["median"]  # noqa: E731
    note = (f"{n} images 640x480 → 336x336, step 500, batch_size {cfg.batch_size}, torch threads {torch.get_num_threads()}; "
            f"per image ms (median): stage {1e3 * med(stage_t) / n:.1f}, loop {1e3 * med(loop_t) / n:.1f}; "
            f"process CPU s per run (all threads, median): stage {med(CPU['stage seva']):.1f}, loop {med(CPU['stage anchor']):.1f}")
    note_op = (f"process CPU s per run (median): batched {med(CPU['op seva']):.2f}, per image {med(CPU['op anchor']):.2f}")
    return [row("P6", f"pixel-mode augment, {n} images (images/s)", "img/s", _rate(stage_t, n), _rate(loop_t, n),
                seva_label="augment stage, batched", anchor_label="per-image loop, SeVa's noise fn",
                target=("ratio>=", 5), better="higher", note=note),
            row("P6", f"noise op only, [{n},3,336,336] (images/s)", "img/s", _rate(noise_b, n), _rate(noise_l, n),
                seva_label="add_diffusion_noise, one batch", anchor_label="SeVa's fn per image",
                target=("ratio>=", 5), better="higher", note=note_op)]


def _rate(seconds: list[float], n: int) -> dict:
    from common import summary

    return summary([n / s for s in seconds], 1)


CPU: dict[str, list[float]] = {}  # label -> process CPU seconds per run (all threads), for the note


def _alternate(a, b, out: Path | None, runs: int, label: str = "") -> tuple[list[float], list[float]]:
    """Wall-time a and b `runs` times each, alternating who goes first, after one warm-up of each."""
    times: dict[int, list[float]] = {0: [], 1: []}
    cpu: dict[int, list[float]] = {0: [], 1: []}
    for i in range(runs + 1):
        for k in (0, 1) if i % 2 == 0 else (1, 0):
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
            t, c = time.perf_counter(), time.process_time()
            (a, b)[k]()
            if i:  # run 0 is the warm-up
                times[k].append(time.perf_counter() - t)
                cpu[k].append(time.process_time() - c)
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
    CPU[f"{label} seva"], CPU[f"{label} anchor"] = cpu[0], cpu[1]
    return times[0], times[1]
