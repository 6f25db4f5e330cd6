"""seva_tasks.llava: SeVa's diffusion noise (against diffusers, bitwise), LLaVA's image loading and padding."""

from __future__ import annotations

import torch
from PIL import Image

from seva_tasks.llava.images import load_rgb, pad_and_resize, square_tensor
from seva_tasks.llava.noise import add_diffusion_noise, alphas_cumprod, row_seed


def ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="sigmoid", beta_start=1e-5, beta_end=5e-3)


def test_noise_schedule_equals_seva_closed_form_and_diffusers():
    s = ddpm()
    closed = torch.sigmoid(torch.linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5
    assert torch.equal(s.betas, closed)  # diffusers' sigmoid schedule is SeVa's: max |Δβ| = 0
    ab = alphas_cumprod()
    assert torch.equal(ab, s.alphas_cumprod) and torch.equal(ab, torch.cumprod(1 - closed, 0))
    for t, (signal, noise) in {500: (0.863, 0.505), 800: (0.467, 0.884)}.items():
        assert round(ab[t].sqrt().item(), 3) == signal and round((1 - ab[t]).sqrt().item(), 3) == noise


def test_add_diffusion_noise_is_the_formula_with_seeded_eps():
    x = torch.rand(2, 3, 8, 8)
    out = add_diffusion_noise(x, 500, [11, 12])
    ab = alphas_cumprod()[500]
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


def test_load_rgb_handles_image_modes(tmp_path):
    for mode, color in {"CMYK": (0, 255, 255, 0), "L": 128, "RGBA": (10, 200, 10, 128), "P": 3, "I;16": 65535}.items():
        Image.new(mode, (5, 4), color).save(tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.jpg")
        img = load_rgb(tmp_path / ("x.png" if mode != "CMYK" else "x.jpg"))
        assert img.mode == "RGB" and img.size == (5, 4)
    Image.new("I;16", (2, 2), 32896).save(tmp_path / "mid.png")  # 16-bit mid-grey is scaled, not clipped to white
    assert load_rgb(tmp_path / "mid.png").getpixel((0, 0)) == (128, 128, 128)


def test_pad_and_resize_pads_with_the_mean_colour_and_centres():
    img = Image.new("RGB", (4, 2), (255, 0, 0))
    out = pad_and_resize(img, 4, (0.5, 0.25, 0.0))
    assert out.size == (4, 4)
    assert out.getpixel((0, 0)) == (127, 63, 0) and out.getpixel((0, 1)) == (255, 0, 0)  # one pad row above
    assert out.getpixel((3, 3)) == (127, 63, 0) and out.getpixel((3, 2)) == (255, 0, 0)
    assert torch.equal(square_tensor(img, 4, (0.5, 0.25, 0.0)), torch.tensor(list(out.getdata())).T.reshape(3, 4, 4).to(torch.uint8))
