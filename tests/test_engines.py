"""Engines: prompt strings, SeVa's noise, the vision path for vLLM embeddings, the shard runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from seva_tasks.engines import EngineConfig, Output, Request, WorkerSpec
from seva_tasks.llava.prompts import conv_prompt
from seva_tasks.engines.shards import done, read_requests, run_shard, write_requests


@pytest.fixture(scope="module")
def toy_model() -> Path:
    from seva_tasks import toy

    toy.ensure(toy.ToyConfig())
    return toy.model_dir(toy.ToyConfig())


@pytest.fixture(scope="module")
def toy_image(toy_model) -> Path:
    from seva_tasks import toy

    return sorted((toy.images_dir(toy.ToyConfig()) / "ocr_vqa").rglob("*.jpg"))[0]


def test_conv_prompts_are_llava_strings():
    q = "What is the title of this book?"
    assert conv_prompt(q, "llava_v1") == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: <image>\nWhat is the title of this book? ASSISTANT:")
    assert conv_prompt(q, "vicuna_v1") == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is the title of this book? ASSISTANT:")


def test_chat_template_prompt_is_the_models_own(toy_model):
    from seva_tasks import toy
    from seva_tasks.llava.prompts import prompt_builder

    # the toy carries llava-hf's template: no system prompt, unlike LLaVA's own strings
    q = "Who wrote this book?"
    assert prompt_builder("chat_template", toy_model)(q) == f"USER: <image>\n{q} ASSISTANT:"
    assert prompt_builder("vicuna_v1", toy_model)(q) == toy.prompt(q) == conv_prompt(q, "vicuna_v1")


@pytest.mark.parametrize("step", [500, 800])
def test_engine_noise_is_augments_recipe_on_the_models_pixels(step, toy_model, toy_image):
    import torch

    from seva_tasks.llava.noise import add_diffusion_noise
    from seva_tasks.llava.vision import ImagePrep

    prep = ImagePrep(toy_model)
    clean = prep.pixel_values(toy_image)
    noised = prep.noised(toy_image, step, 12345)
    assert torch.equal(noised, add_diffusion_noise(clean, step, [12345]))
    assert not torch.equal(noised, clean)


def test_vision_encoder_equals_llava_image_features(toy_model, toy_image):
    import torch
    from transformers import LlavaForConditionalGeneration

    from seva_tasks.engines.vision import llava_encoder
    from seva_tasks.llava.vision import ImagePrep

    pv = ImagePrep(toy_model).noised(toy_image, 500, 7)
    model = LlavaForConditionalGeneration.from_pretrained(str(toy_model), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model.model.get_image_features(pixel_values=pv, vision_feature_layer=-2,
                                             vision_feature_select_strategy="default").pooler_output[0]
    got = llava_encoder(toy_model)(pv)[0]
    assert got.shape == ref.shape == (16, 64)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_vision_encoder_runs_a_float16_preset_in_float32_on_the_cpu(toy_model, toy_image):
    import torch

    from seva_tasks.engines.vision import llava_encoder
    from seva_tasks.llava.vision import ImagePrep

    pv = torch.cat([ImagePrep(toy_model).noised(toy_image, 500, s) for s in (7, 8)])  # a batch of two
    half, full = llava_encoder(toy_model, "float16"), llava_encoder(toy_model, "float32")
    assert (half.device, half.dtype) == ("cpu", torch.float32)  # no half-precision CPU kernels needed
    got = half(pv)
    assert got.dtype == torch.float16 and got.device.type == "cpu" and got.shape == (2, 16, 64)  # vLLM's dtype
    torch.testing.assert_close(got, full(pv).half())


def test_vision_device_uses_the_gpu_when_there_is_one(monkeypatch):
    import torch

    from seva_tasks.engines.vision import vision_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert vision_device("auto") == "cuda" and vision_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert vision_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="vision_device=auto"):
        vision_device("cuda")


def test_square_image_is_llava_pad_path(toy_model, toy_image):
    from PIL import Image

    from seva_tasks.llava.vision import ImagePrep

    prep = ImagePrep(toy_model)
    img = prep.square(toy_image)
    assert img.size == (64, 64)
    with Image.open(toy_image) as raw:
        assert raw.size != (64, 64)  # the toy's covers are not square: padding happened


class _FlakyEngine:
    """Answers "ok", but rejects any batch holding a request whose prompt says BAD."""

    row_errors = (ValueError,)

    def prompt_tokens(self, prompt, image=None):
        return len(prompt)

    def generate(self, reqs):
        if any("BAD" in r.prompt for r in reqs):
            raise ValueError("rejected")
        return [Output(r.req_id, "ok", [1, 2], "stop", len(r.prompt)) for r in reqs]


def test_shard_runner_drops_only_bad_and_overlong_rows(tmp_path):
    rows = [{"req_id": f"r{i}", "prompt": p, "image": "x.png", "noise_step": None, "aug_seed": None}
            for i, p in enumerate(["a", "BAD", "b", "x" * 50, "c"])]
    write_requests(rows, tmp_path / "req.parquet")
    stats = run_shard(tmp_path / "req.parquet", tmp_path / "res.parquet", EngineConfig(max_model_len=20), _FlakyEngine())
    import pyarrow.parquet as pq

    res = {r["req_id"]: r for r in pq.read_table(tmp_path / "res.parquet").to_pylist()}
    assert [res[f"r{i}"]["text"] for i in (0, 2, 4)] == ["ok"] * 3
    assert res["r1"]["text"] is None and res["r1"]["error"].startswith("engine_rejected:")
    assert res["r3"]["text"] is None and res["r3"]["error"].startswith("prompt_too_long: 50 prompt tokens")
    assert (stats["rows"], stats["answered"], stats["dropped"], stats["gen_tokens"]) == (5, 3, 2, 6)
    assert done(tmp_path / "req.parquet", tmp_path / "res.parquet") == stats


def test_shard_runner_raises_when_every_row_fails(tmp_path):
    rows = [{"req_id": f"r{i}", "prompt": "BAD", "image": "x.png", "noise_step": None, "aug_seed": None} for i in range(3)]
    write_requests(rows, tmp_path / "req.parquet")
    with pytest.raises(RuntimeError, match="every one of 3 requests failed"):
        run_shard(tmp_path / "req.parquet", tmp_path / "res.parquet", EngineConfig(), _FlakyEngine())
    assert not (tmp_path / "res.parquet").exists()


def test_result_counts_only_for_the_requests_it_answers(tmp_path):
    row = {"req_id": "r0", "prompt": "a", "image": "x.png", "noise_step": None, "aug_seed": None}
    write_requests([row], tmp_path / "req.parquet")
    run_shard(tmp_path / "req.parquet", tmp_path / "res.parquet", EngineConfig(), _FlakyEngine())
    assert done(tmp_path / "req.parquet", tmp_path / "res.parquet") is not None
    write_requests([{**row, "prompt": "changed"}], tmp_path / "req.parquet")
    assert done(tmp_path / "req.parquet", tmp_path / "res.parquet") is None
    assert read_requests(tmp_path / "req.parquet") == [Request("r0", "changed", "x.png")]


def test_hf_engine_greedy_batch_matches_batch_one(toy_model, toy_image):
    from seva_tasks.engines.hf import HFEngine

    prompts = [conv_prompt(q, "llava_v1") for q in ("Who wrote this book?", "What is the genre of this book?")]
    reqs = [Request(f"r{i}", p, str(toy_image), *ns) for i, p in enumerate(prompts) for ns in ((None, None), (500, 3))]
    one = HFEngine(WorkerSpec(kind="hf", model=toy_model, dtype="float32", max_new_tokens=8)).generate(reqs)
    four = HFEngine(WorkerSpec(kind="hf", model=toy_model, dtype="float32", max_new_tokens=8, batch_size=4)).generate(reqs)
    assert [o.token_ids for o in one] == [o.token_ids for o in four]
    assert all(o.finish_reason in ("stop", "length") and o.prompt_tokens > 16 for o in one)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_first_token_logprobs_agree_across_engines_and_with_one_forward_pass(toy_model, tmp_path):
    """engine.logprobs: vLLM's and transformers' (batched) top-k of the first answer token are the model's own
    next-token distribution after the prompt, one question at a time, image padded as the engines pad it."""
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    from seva_tasks import toy
    from seva_tasks.benchmarks import pope
    from seva_tasks.engines import pool
    from seva_tasks.llava.images import pad_and_resize
    from seva_tasks.toy.heldout import load

    questions = pope.load(toy.root_dir(toy.ToyConfig()) / "eval" / "pope")[:5]
    rows = [{"req_id": f"q{i}", "prompt": conv_prompt(q.text, "vicuna_v1"), "image": str(q.image), "noise_step": None,
             "aug_seed": None} for i, q in enumerate(questions)]
    got = {}
    for kind in ("hf", "vllm"):
        jobs = pool.write_shards(rows, tmp_path / kind, 8)
        cfg = EngineConfig(kind=kind, dtype="float32", logprobs=4, batch_size=4, max_model_len=512, kv_cache_memory_bytes=64 << 20)
        pool.run_workers(cfg, toy_model, 3, jobs, embeds=False, work=tmp_path / f"work-{kind}", desc=kind)
        got[kind] = {r["req_id"]: r["first_logprobs"] for j in jobs for r in pq.read_table(j["results"]).to_pylist()}
    model, proc = load(toy_model)
    size, mean = model.config.vision_config.image_size, proc.image_processor.image_mean
    for i, q in enumerate(questions):
        with Image.open(q.image) as im:
            enc = proc(images=[pad_and_resize(im.convert("RGB"), size, mean)], text=[rows[i]["prompt"]], return_tensors="pt")
        with torch.inference_mode():
            top = torch.log_softmax(model(**enc).logits[0, -1].float(), -1).topk(4)
        want = [(proc.tokenizer.decode([t]), lp) for t, lp in zip(top.indices.tolist(), top.values.tolist())]
        for kind in ("hf", "vllm"):
            alts = got[kind][f"q{i}"]
            assert [a["text"] for a in alts] == [t for t, _ in want], kind
            assert [a["logprob"] for a in alts] == pytest.approx([lp for _, lp in want], abs=1e-4), kind
