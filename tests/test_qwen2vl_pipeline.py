"""The toy-qwen2vl preset through every stage (issue 16, phase 2): filter, DPO training on Qwen's chat
template (the merger trained like LLaVA's projector), the merged model served by vLLM, baseline and
evaluate in Qwen's prompt format; and `seva inspect train-example` showing `<|im_end|>` in the loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SMALL = {"sample.subsets": {"ocr_vqa": {"images": 4, "questions_per_image": 1},
                            "textvqa": {"images": 4, "questions_per_image": 1}},
         "train.max_steps": 2, "train.per_device_train_batch_size": 4, "train.save_steps": 50,
         "evaluate.benchmarks": ["textvqa"], "evaluate.engine.kind": "hf", "evaluate.shard_size": 4096}


@pytest.fixture(scope="module")
def qwen_model() -> Path:
    from seva_tasks.toy import qwen2vl

    return qwen2vl.ensure()


@pytest.fixture(scope="module")
def run(tmp_path_factory, qwen_model) -> tuple:
    """toy-qwen2vl on 8 rows, every stage through `pipeline.run_stage` (generate with vLLM, evaluate with HF)."""
    from seva_tasks import pipeline
    from seva_tasks.config import load_config

    data = tmp_path_factory.mktemp("data")
    cfg = load_config("toy-qwen2vl", {"data_dir": str(data), **SMALL})
    pipeline.prepare(cfg)
    refs: dict = {}
    for name in pipeline.nodes(cfg):
        refs[name] = pipeline.run_stage(cfg, name, refs)
    return cfg, refs, data


def _manifest(ref: dict) -> dict:
    return json.loads((Path(ref["path"]) / "manifest.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_toy_qwen2vl_runs_every_stage(run, qwen_model):
    import polars as pl

    from seva_tasks import pipeline
    from seva_tasks.stages.filter import OUTPUT

    cfg, refs, _ = run
    assert tuple(refs) == pipeline.nodes(cfg) == ("sample", "augment", "generate", "filter", "train", "baseline", "evaluate")
    pairs = pl.read_parquet(Path(refs["filter"]["path"]) / OUTPUT)
    assert pairs.height >= 4 and set(pairs["engine"]) == {"vllm"}
    stats = _manifest(refs["train"])["stats"]
    assert stats["counts"]["steps"] == 2 and stats["final"]["rewards/margins"] > 0
    # LoRA on the text model only, the merger in full, the rest of the visual tower frozen
    assert stats["trainable"]["lora"] > 0 and stats["trainable"]["modules_to_save"] > 0 and stats["trainable"]["other"] == 0
    # each image's own token count (dynamic resolution), not one fixed count
    assert 4 <= stats["lengths"]["image_tokens"] <= 16
    metrics = json.loads((Path(refs["evaluate"]["path"]) / "metrics.json").read_text())
    assert set(metrics["benchmarks"]) == {"textvqa"}
    assert all("base" in e and "aligned" in e for e in metrics["benchmarks"].values())
    assert all(a["answered"] == a["questions"] > 0 for a in metrics["answers"]["aligned"].values())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_merged_qwen_loads_in_vllm_and_greedy_equals_transformers(run, tmp_path):
    """train's merged/ is what later rounds generate with and evaluate serves: vLLM must load it and agree with HF."""
    import pyarrow.parquet as pq

    from seva_tasks import toy
    from seva_tasks.engines import EngineConfig, Request, WorkerSpec
    from seva_tasks.engines.hf import HFEngine
    from seva_tasks.engines.pool import run_workers, write_shards
    from seva_tasks.qwen2vl.prompts import prompt_builder

    _, refs, _ = run
    merged = Path(refs["train"]["path"]) / "merged"
    prompt = prompt_builder(merged)
    images = sorted((toy.images_dir(toy.ToyConfig()) / "textvqa").rglob("*.jpg"))[:3]
    reqs = [Request(f"r{i}", prompt("What does the sign say?"), str(img), *noise)
            for i, img in enumerate(images) for noise in ((None, None), (500, 7 + i))]
    reqs = [Request(f"{r.req_id}-{j}", r.prompt, r.image, r.noise_step, r.aug_seed) for j, r in enumerate(reqs)]
    hf = HFEngine(WorkerSpec(kind="hf", model=merged, dtype="float32", max_new_tokens=8)).generate(reqs)
    jobs = write_shards([{"req_id": r.req_id, "prompt": r.prompt, "image": r.image, "noise_step": r.noise_step,
                          "aug_seed": r.aug_seed} for r in reqs], tmp_path, len(reqs))
    cfg = EngineConfig(kind="vllm", dtype="float32", max_model_len=512, kv_cache_memory_bytes=64 << 20)
    run_workers(cfg, merged, 8, jobs, embeds=True, work=tmp_path, desc="test: vllm merged")
    got = {r["req_id"]: r for r in pq.read_table(jobs[0]["results"]).to_pylist()}
    assert all(got[o.req_id]["error"] is None for o in hf)
    assert [got[o.req_id]["token_ids"] for o in hf] == [o.token_ids for o in hf]


@pytest.mark.slow
def test_inspect_train_example_shows_qwens_chat_format_with_im_end_in_the_loss(run, capsys):
    from seva_tasks import cli

    _, _, data = run
    assert cli.main(["inspect", "train-example", "toy-qwen2vl", f"data_dir={data}",
                     *(f"{k}={json.dumps(v)}" for k, v in SMALL.items())]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    prompt = lines[lines.index(next(x for x in lines if x.startswith("prompt ("))) + 1:]
    assert prompt[0] == "  <|im_start|>system" and "<|vision_start|><|image_pad|>×" in text
    assert text.count("<|im_start|>assistant") == 1 and "USER:" not in text
    sides = [x for x in lines if x.startswith(("chosen (", "rejected ("))]
    assert len(sides) == 2 and all("all in the loss" in s for s in sides)
    tokens = [lines[lines.index(s) + 1] for s in sides]
    assert all(t.split()[-2:] == ["<|im_end|>", "Ċ"] for t in tokens)  # the end of turn (and its newline) is trained
    assert "image_grid_thw: [[1," in text


def test_train_refuses_llava_strings_for_a_qwen_model(tmp_path, qwen_model):
    from seva_tasks.errors import ConfigError
    from seva_tasks.stages.train import TrainConfig, _check_inputs

    (tmp_path / "pairs.parquet").write_bytes(b"")
    with pytest.raises(ConfigError, match="train.conv_template=vicuna_v1 .* is a qwen2_vl model. Set train.conv_template=chat_template"):
        _check_inputs(TrainConfig(), qwen_model, tmp_path / "pairs.parquet")


def test_each_family_names_its_projector(qwen_model):
    from seva_tasks import toy
    from seva_tasks.stages.train import TrainConfig

    assert TrainConfig().trained_modules(qwen_model) == ["merger"]
    assert TrainConfig().trained_modules(toy.model_dir(toy.ToyConfig())) == ["multi_modal_projector"]
    assert TrainConfig(modules_to_save=[]).trained_modules(qwen_model) == []


def test_chat_template_models_are_asked_as_lmms_eval_asks_qwen2_vl(qwen_model, tmp_path):
    from seva_tasks.benchmarks import protocol
    from seva_tasks.benchmarks.common import Question
    from seva_tasks.llava.prompts import SHORT_ANSWER
    from seva_tasks.qwen2vl.prompts import prompt_builder

    text = f"what is written?\nReference OCR token: A, B\n{SHORT_ANSWER}"
    q = Question(1, text, tmp_path / "x.jpg", 16, "", "what is written?")
    qwen = protocol._requests("textvqa", [q], prompt_builder(qwen_model), tmp_path, chat=True)[0]["prompt"]
    assert qwen == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    f"<|vision_start|><|image_pad|><|vision_end|>what is written?\n{SHORT_ANSWER}<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert protocol._requests("textvqa", [q], str, tmp_path, chat=False)[0]["prompt"] == text  # LLaVA: unchanged
    assert protocol._requests("pope", [q], str, tmp_path, chat=True)[0]["prompt"] == text  # only TextVQA differs


@pytest.mark.slow
def test_length_check_counts_each_qwen_image_as_the_collator_does(run, qwen_model):
    """The max_length check's prompt lengths (each image's own token count) equal the collator's batches."""
    from seva_tasks.preference import PreferenceCollator, load_pairs, token_lengths
    from seva_tasks.stages.filter import OUTPUT
    from seva_tasks.stages.train import _load_processor

    cfg, refs, _ = run
    processor = _load_processor(cfg.train, qwen_model)
    ds = load_pairs(Path(refs["filter"]["path"]) / OUTPUT)
    p_len, _, _ = token_lengths(ds, cfg.train.conv_template, processor)
    collate = PreferenceCollator(processor, cfg.train.conv_template)
    actual = [int(b["completion_mask"][0].argmax()) for b in (collate([row]) for row in ds)]
    assert p_len == actual and len(set(actual)) > 1  # images of different sizes: different counts
