"""The Qwen2-VL family: detection, SeVa's exact noise on the processor's pixel_values, the visual
tower for vLLM embeddings, and vLLM == transformers greedy on the tiny random Qwen2-VL (clean and noised)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seva_tasks.engines import Request, WorkerSpec
from seva_tasks.errors import InputError
from seva_tasks.family import family

STEP, SEED = 500, 20261202


@pytest.fixture(scope="module")
def qwen_model() -> Path:
    from seva_tasks.toy import qwen2vl

    return qwen2vl.ensure()


@pytest.fixture(scope="module")
def images(qwen_model) -> list[Path]:
    """Two book covers, two signs, two shape scenes: different sizes, so different image_grid_thw."""
    from seva_tasks import toy

    root = toy.images_dir(toy.ToyConfig())
    return [p for prefix in ("ocr_vqa", "textvqa", "coco") for p in sorted((root / prefix).rglob("*.jpg"))[:2]]


@pytest.fixture(scope="module")
def requests(qwen_model, images) -> list[Request]:
    """Each image clean and with exact noise, behind the checkpoint's chat-template prompt."""
    from seva_tasks.qwen2vl.prompts import prompt_builder

    prompt = prompt_builder(qwen_model)
    questions = ["What is the title of this book?", "What does the sign say?", "How many shapes are there?"]
    return [Request(f"{i}-{side}", prompt(questions[i // 2]), str(img), *noise)
            for i, img in enumerate(images) for side, noise in (("clean", (None, None)), ("noised", (STEP, SEED + i)))]


# ----------------------------------------------------------------------------- family


def test_family_is_read_from_config_architectures(tmp_path, qwen_model):
    from seva_tasks import toy

    assert family(toy.model_dir(toy.ToyConfig())) == "llava" and family(qwen_model) == "qwen2_vl"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2_5_VLForConditionalGeneration"]}))
    assert family(tmp_path) == "qwen2_vl"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MllamaForConditionalGeneration"]}))
    with pytest.raises(InputError, match=rf"{tmp_path}/config.json names architectures \['Mllama.*seva supports"):
        family(tmp_path)
    with pytest.raises(InputError, match=rf"Cannot read the model's {tmp_path}/nowhere/config.json"):
        family(tmp_path / "nowhere")


def test_prompt_is_the_checkpoints_chat_template(requests):
    assert requests[0].prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                                  "<|vision_start|><|image_pad|><|vision_end|>What is the title of this book?<|im_end|>\n"
                                  "<|im_start|>assistant\n")


# ----------------------------------------------------------------------------- exact noise


def test_exact_noise_is_sevas_formula_on_the_processors_pixel_values(qwen_model, images):
    import torch
    from diffusers import DDPMScheduler
    from transformers import AutoProcessor

    from seva_tasks.llava.noise import alphas_cumprod
    from seva_tasks.qwen2vl.images import ImageInputs

    prep = ImageInputs(qwen_model)
    x, grid = prep.pixel_values(images[0])
    full = AutoProcessor.from_pretrained(str(qwen_model))(text=["<|image_pad|>"], images=[prep.image(images[0])],
                                                          return_tensors="pt")
    assert torch.equal(x, full["pixel_values"]) and torch.equal(grid, full["image_grid_thw"])  # the processor's own
    n = x.shape[0]
    assert n == int(grid.prod()) and x.shape[1] == 3 * 2 * 14 * 14
    noised = prep.noise(x, STEP, SEED)

    # x_t = √ᾱ_t·x + √(1−ᾱ_t)·ε, ε ~ N(0, 1) from the seed, one value per pixel (shared by the 2 temporal copies)
    eps = torch.randn((n, 3, 14, 14), generator=torch.Generator().manual_seed(SEED))
    ab = alphas_cumprod()[STEP]
    frame = x.view(n, 3, 2, 14, 14)[:, :, 0]
    want = (frame * ab**0.5 + eps * (1 - ab) ** 0.5)[:, :, None].expand(n, 3, 2, 14, 14).reshape(n, -1)
    assert torch.equal(noised, want)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="sigmoid", beta_start=1e-5, beta_end=5e-3)
    ddpm = sched.add_noise(frame[None], eps[None], torch.tensor([STEP]))[0]
    assert torch.equal(noised.view(n, 3, 2, 14, 14)[:, :, 1], ddpm)
    assert noised.numpy().tobytes() == prep.noise(x, STEP, SEED).numpy().tobytes()  # same seed, same bytes
    assert not torch.equal(noised, prep.noise(x, STEP, SEED + 1))
    assert torch.equal(prep.noised(images[0], STEP, SEED)[0], noised)


# ----------------------------------------------------------------------------- engines


def test_visual_encoder_equals_the_models_image_features(qwen_model, images):
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from seva_tasks.engines.vision import qwen_encoder
    from seva_tasks.qwen2vl.images import ImageInputs

    prep = ImageInputs(qwen_model)
    pvs, grids = zip(*(prep.noised(p, STEP, SEED) for p in images[:3]))
    pv, grid = torch.cat(pvs), torch.cat(grids)
    model = Qwen2VLForConditionalGeneration.from_pretrained(str(qwen_model), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model.model.get_image_features(pixel_values=pv, image_grid_thw=grid).pooler_output
    got = qwen_encoder(qwen_model)(pv, grid)
    assert [g.shape for g in got] == [r.shape for r in ref] and got[0].shape[1] == 128
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def hf_outputs(qwen_model, requests):
    from seva_tasks.engines.hf import HFEngine

    return HFEngine(WorkerSpec(kind="hf", model=qwen_model, dtype="float32", max_new_tokens=12)).generate(requests)


def test_hf_engine_batch_matches_batch_one(qwen_model, requests, hf_outputs):
    from seva_tasks.engines.hf import HFEngine

    four = HFEngine(WorkerSpec(kind="hf", model=qwen_model, dtype="float32", max_new_tokens=12, batch_size=4))
    assert [o.token_ids for o in four.generate(requests)] == [o.token_ids for o in hf_outputs]
    clean, noised = hf_outputs[0::2], hf_outputs[1::2]
    assert sum(c.token_ids != n.token_ids for c, n in zip(clean, noised)) >= 3  # the noise reaches the model
    # the length check counts each image's own tokens (dynamic resolution), exactly as the model sees them
    assert [four.prompt_tokens(r.prompt, r.image) for r in requests] == [o.prompt_tokens for o in hf_outputs]
    assert len({o.prompt_tokens for o in hf_outputs}) > 1  # different sizes, different counts
    text = len(four.tokenizer(requests[0].prompt).input_ids)
    assert four.prompt_tokens(requests[0].prompt) == text + 16 - 1  # no image known: at most 112²/28² tokens


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_vllm_greedy_equals_hf_greedy_clean_and_exact_noise(qwen_model, requests, hf_outputs, tmp_path):
    """One vLLM worker process, as generate starts it: clean rows as PIL, noised rows as embeddings."""
    import pyarrow.parquet as pq

    from seva_tasks.engines import EngineConfig
    from seva_tasks.engines.pool import run_workers, write_shards

    rows = [{"req_id": r.req_id, "prompt": r.prompt, "image": r.image, "noise_step": r.noise_step,
             "aug_seed": r.aug_seed} for r in requests]
    jobs = write_shards(rows, tmp_path, len(rows))
    cfg = EngineConfig(kind="vllm", dtype="float32", max_model_len=512, kv_cache_memory_bytes=64 << 20)
    run_workers(cfg, qwen_model, 12, jobs, embeds=True, work=tmp_path, desc="test: vllm")
    got = {r["req_id"]: r for r in pq.read_table(jobs[0]["results"]).to_pylist()}
    assert all(got[o.req_id]["error"] is None for o in hf_outputs)
    same = sum(got[o.req_id]["token_ids"] == o.token_ids for o in hf_outputs)
    print(f"\nvLLM vs transformers greedy on the tiny Qwen2-VL: {same}/{len(hf_outputs)} rows equal")
    assert [got[o.req_id]["token_ids"] for o in hf_outputs] == [o.token_ids for o in hf_outputs]
    assert [got[o.req_id]["text"] for o in hf_outputs] == [o.text for o in hf_outputs]
    assert [got[o.req_id]["prompt_tokens"] for o in hf_outputs] == [o.prompt_tokens for o in hf_outputs]


# ----------------------------------------------------------------------------- the toy-qwen2vl preset


@pytest.fixture(scope="module")
def qwen_run(tmp_path_factory) -> tuple:
    """toy-qwen2vl, scaled to 8 rows: sample -> augment artifacts (generate is each test's)."""
    from seva_tasks import pipeline
    from seva_tasks.config import load_config

    cfg = load_config("toy-qwen2vl", {"data_dir": str(tmp_path_factory.mktemp("data")),
                                      "sample.subsets": {"ocr_vqa": {"images": 4, "questions_per_image": 1},
                                                         "textvqa": {"images": 4, "questions_per_image": 1}}})
    pipeline.prepare(cfg)
    refs: dict = {}
    for name in ("sample", "augment"):
        refs[name] = pipeline.run_stage(cfg, name, refs)
    return cfg, refs


def test_generate_refuses_llava_strings_for_a_qwen_model(qwen_run, qwen_model, tmp_path):
    from seva_tasks.errors import ConfigError
    from seva_tasks.stages.generate import GenerateConfig, run

    _, refs = qwen_run
    with pytest.raises(ConfigError, match="generate.conv_template=llava_v1 .* is a qwen2_vl model. Set generate.conv_template=chat_template"):
        run(GenerateConfig(conv_template="llava_v1"), {"augment": Path(refs["augment"]["path"]), "model": qwen_model}, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_toy_qwen2vl_preset_runs_sample_augment_generate_with_vllm(qwen_run, qwen_model):
    import polars as pl

    from seva_tasks import pipeline
    from seva_tasks.stages.generate import OUTPUT

    cfg, refs = qwen_run
    assert pipeline.nodes(cfg)[:3] == ("sample", "augment", "generate")  # no pretrain for this model
    assert pipeline.model_input(cfg, "generate", refs) == qwen_model
    gen = pipeline.run_stage(cfg, "generate", refs)
    df = pl.read_parquet(Path(gen["path"]) / OUTPUT)
    assert df.height == 8 and df["chosen"].null_count() == df["rejected"].null_count() == 0
    assert set(df["mode"]) == {"exact"} and set(df["engine"]) == {"vllm"} and set(df["conv_template"]) == {"chat_template"}
    assert all(p.startswith("<|im_start|>system\n") and p.endswith("<|im_start|>assistant\n") for p in df["prompt"])
    assert (df["chosen_token_ids"] != df["rejected_token_ids"]).sum() >= 2  # the noise changes answers
