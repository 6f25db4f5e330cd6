"""Stage `filter`: each drop reason, SeVa's mode, the TRL Parquet (polars, datasets, one DPO step)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seva_tasks.stages.filter import OUTPUT, SEVA_JSON, FilterConfig, drop_reason, inspect_pairs, normalize, run

# (id, chosen, rejected, chosen_finish, rejected_finish): what the strict default does with each
PAIRS = [
    ("keep", "A red book.", "A blue book.", "stop", "stop"),
    ("same", "Same answer.", "Same answer.", "stop", "stop"),
    ("norm", "The Title: Rivers!", "the  title rivers", "stop", "stop"),
    ("empty", "  ", "Something.", "stop", "stop"),
    ("cut", "It goes on and on", "Short.", "length", "stop"),
    ("near", "the book is red and big", "the book is red and small", "stop", "stop"),
    ("lines", "Line one\nLine two", "Line one\nLine three", "stop", "stop"),
]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """A generate artifact dir: generations.parquet over real toy images, plus its manifest."""
    import polars as pl

    from seva_tasks import toy

    toy.ensure(toy.ToyConfig())
    root = toy.images_dir(toy.ToyConfig())
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))[: len(PAIRS)]
    d = tmp_path_factory.mktemp("generate") / "0123456789abcdef0123"
    d.mkdir()
    pl.DataFrame({
        "id": [p[0] for p in PAIRS], "subset": ["ocr_vqa", "textvqa"] * 3 + ["ocr_vqa"],
        "image": images, "question": [f"Question {i}?" for i in range(len(PAIRS))],
        "augmentation": "diffusion", "noise_step": 500, "aug_seed": list(range(len(PAIRS))),
        "chosen": [p[1] for p in PAIRS], "rejected": [p[2] for p in PAIRS],
        "chosen_finish": [p[3] for p in PAIRS], "rejected_finish": [p[4] for p in PAIRS],
        "chosen_tokens": [len(p[1].split()) for p in PAIRS], "rejected_tokens": [len(p[2].split()) for p in PAIRS],
        "engine": "vllm",
    }).write_parquet(d / "generations.parquet")
    (d / "manifest.json").write_text(json.dumps({"stats": {"image_root": str(root)}}))
    return d


@pytest.fixture(scope="module")
def strict(generated, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("filter")
    return out, run(FilterConfig(), {"generate": generated}, out)


def test_filter_drops_each_reason_once(strict):
    import polars as pl

    out, stats = strict
    assert stats["drops"] == {"empty_answer": 1, "truncated": 1, "exact_equal": 1, "equal_normalized": 1}
    df = pl.read_parquet(out / OUTPUT)
    assert df["id"].to_list() == ["keep", "near", "lines"]
    assert stats["counts"]["kept"] == 3 and stats["counts"]["pairs_in"] == len(PAIRS)
    lines = df.filter(pl.col("id") == "lines")
    assert lines["chosen"][0].to_list() == [{"role": "assistant", "content": "Line one\nLine two"}]  # strict keeps newlines
    assert lines["prompt"][0].to_list() == [{"role": "user", "content": "Question 6?"}]
    assert df["generation_key"].unique().to_list() == ["0123456789abcdef0123"]


def test_filter_near_duplicate_threshold(generated, tmp_path):
    stats = run(FilterConfig(near_duplicate=0.8), {"generate": generated}, tmp_path)
    assert stats["drops"]["near_duplicate"] == 1 and stats["counts"]["kept"] == 2


def test_filter_seva_mode_is_exact_equal_only_and_flattens_newlines(generated, tmp_path):
    stats = run(FilterConfig(mode="seva"), {"generate": generated}, tmp_path)
    assert stats["drops"] == {"exact_equal": 1}
    seva = json.loads((tmp_path / SEVA_JSON).read_text())
    assert len(seva) == len(PAIRS) - 1 and set(seva[0]) == {"chosen", "reject", "question", "image_id"}
    by_q = {s["question"]: s for s in seva}
    assert by_q["Question 6?"]["chosen"] == "Line oneLine two" and by_q["Question 6?"]["reject"] == "Line oneLine three"
    assert all(s["image_id"].endswith(".jpg") for s in seva)


def test_drop_reason_rules():
    cfg = FilterConfig()
    assert drop_reason("a", "", "stop", "stop", cfg) == "empty_answer"
    assert drop_reason("a", "b", "stop", "length", cfg) == "truncated"
    assert drop_reason("Yes.", "Yes.", "stop", "stop", cfg) == "exact_equal"
    assert drop_reason("Yes.", "yes", "stop", "stop", cfg) == "equal_normalized"
    assert drop_reason("Yes.", "No.", "stop", "stop", cfg) is None
    assert drop_reason("a", "b", "stop", "length", FilterConfig(drop_truncated=False)) is None
    assert normalize("  Hello,\n  WORLD!! «ok» ") == "hello world ok"


def test_filter_max_pairs_downsamples_per_subset_with_seed(generated, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = run(FilterConfig(mode="seva", max_pairs={"ocr_vqa": 1}), {"generate": generated}, tmp_path / "a")
    b = run(FilterConfig(mode="seva", max_pairs={"ocr_vqa": 1}), {"generate": generated}, tmp_path / "b")
    assert a["counts"]["kept:ocr_vqa"] == 1 and a["drops"]["downsampled"] == 3  # ocr_vqa: keep, norm, cut, lines
    assert (tmp_path / "a" / OUTPUT).read_bytes() == (tmp_path / "b" / OUTPUT).read_bytes()


def test_pairs_load_in_polars_and_datasets_with_padded_images(strict):
    import polars as pl
    from datasets import load_dataset
    from PIL import Image

    out, _ = strict
    df = pl.read_parquet(out / OUTPUT)
    assert df.columns[:4] == ["images", "prompt", "chosen", "rejected"]
    ds = load_dataset("parquet", data_files=str(out / OUTPUT), split="train")
    img = ds[0]["images"][0]
    assert isinstance(img, Image.Image) and img.width == img.height  # expand2square, as LLaVA-1.5
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "A red book."}]


def test_inspect_pairs_shows_counts(strict, tmp_path):
    (tmp_path / OUTPUT).write_bytes((strict[0] / OUTPUT).read_bytes())
    (tmp_path / "manifest.json").write_text(json.dumps({"stats": strict[1]}))  # as the store publishes it
    text = inspect_pairs(tmp_path)
    assert "pairs kept: 3 of 7" in text and "exact_equal 1" in text and "mean length (tokens)" in text


def test_pairs_train_one_dpo_step_unchanged(strict, tmp_path):
    """TRL's DPOTrainer takes the Parquet as loaded, with the tiny LLaVA and a tiny LoRA."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from trl import DPOConfig, DPOTrainer

    from seva_tasks import toy

    model_dir = str(toy.model_dir(toy.ToyConfig()))
    ds = load_dataset("parquet", data_files=str(strict[0] / OUTPUT), split="train")
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    args = DPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, learning_rate=1e-2,
                     report_to="none", save_strategy="no", logging_steps=1, max_length=None, use_cpu=True,
                     gradient_checkpointing=False)
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=AutoProcessor.from_pretrained(model_dir),
                         peft_config=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)  # lr 1e-2: one step moves B
