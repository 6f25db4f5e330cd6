"""Stage `pretrain`: cached like every stage, a model dir that transformers (and vLLM) load, and a
pretrained toy LLaVA that answers held-out questions well above chance."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never touch the hub

import json
import random

import pytest
from pydantic import ValidationError

from seva_tasks import pipeline, pretrain, toy
from seva_tasks.config import PipelineConfig
from seva_tasks.pretrain import PretrainConfig
from seva_tasks.toy import ToyConfig

# Shorter than the preset's run, and still comfortably above the thresholds below (measured: see
# `test_pretrained_model_answers_held_out_questions_well_above_chance`).
FAST = dict(steps=900, heldout=0)
HELD_OUT_SEED = 4242  # not the stage's seed: these scenes were never seen in training
THRESHOLDS = {"color": 0.5, "genre": 0.35, "all": 0.45}  # chance: 1/6, 1/10, ~0.3 (see pretrain.CHANCE)


class _Config(PipelineConfig):
    """The pipeline config with a `pretrain` section (until config.py carries one)."""

    pretrain: PretrainConfig = PretrainConfig()


def _config(data_dir, **pretrain_cfg) -> PipelineConfig:
    if "pretrain" in PipelineConfig.model_fields:
        return PipelineConfig(data_dir=data_dir, toy=ToyConfig(), pretrain=PretrainConfig(**pretrain_cfg))
    return _Config(data_dir=data_dir, toy=ToyConfig(), pretrain=PretrainConfig(**pretrain_cfg))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The stage run once through the store, in a temp data dir: (config, reference)."""
    toy.ensure(ToyConfig())
    cfg = _config(tmp_path_factory.mktemp("data"), **FAST)
    return cfg, pipeline.run_stage(cfg, "pretrain", {})


def test_pretrain_second_run_is_a_cache_hit(built, monkeypatch):
    cfg, ref = built
    before = (pipeline.store_for(cfg).dir("pretrain", ref["key"]) / "manifest.json").read_bytes()
    monkeypatch.setattr(pretrain, "run", lambda *a, **k: pytest.fail("pretrain recomputed a cached artifact"))
    again = pipeline.run_stage(cfg, "pretrain", {})
    assert again == ref
    assert (pipeline.store_for(cfg).dir("pretrain", ref["key"]) / "manifest.json").read_bytes() == before
    assert [r["state"] for r in pipeline.status(cfg) if r["stage"] == "pretrain"] in ([], ["fresh"])


def test_pretrain_key_follows_config_and_base_model(built, tmp_path):
    cfg, ref = built
    assert pipeline.key_for(cfg, "pretrain", {}) == ref["key"]
    other = _config(cfg.data_dir, **{**FAST, "steps": FAST["steps"] + 1})
    assert pipeline.key_for(other, "pretrain", {}) != ref["key"]
    fp = pretrain.fingerprint(cfg.pretrain)
    assert fp["model"]["model.safetensors"] == toy.world(ToyConfig())["files"]["model/model.safetensors"]


def test_pretrain_publishes_a_full_model_dir_with_vllm_names(built):
    from safetensors import safe_open

    _, ref = built
    out, base = pipeline.Path(ref["path"]) / "model", toy.model_dir(ToyConfig())
    for name in ("config.json", "tokenizer.json", "processor_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (base / name).read_bytes(), name
    with safe_open(out / "model.safetensors", "pt") as f, safe_open(base / "model.safetensors", "pt") as g:
        assert sorted(f.keys()) == sorted(g.keys())  # llava-hf names: vision_tower.vision_model.*
        assert any(k.startswith("vision_tower.vision_model.") for k in f.keys())
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float32"}
        changed = [k for k in f.keys() if not f.get_tensor(k).equal(g.get_tensor(k))]
    assert len(changed) > 0.9 * len(list(f.keys()))  # every tower is trained, not just a head


def test_pretrained_model_answers_held_out_questions_well_above_chance(built):
    _, ref = built
    items = pretrain.heldout(HELD_OUT_SEED, 120)
    trained = pretrain.accuracy(*pretrain.load(pipeline.Path(ref["path"]) / "model"), items)
    base = pretrain.accuracy(*pretrain.load(toy.model_dir(ToyConfig())), items)
    print(f"\nheld-out accuracy, base (random weights): {base}\npretrained ({FAST['steps']} steps): {trained}")
    assert base["all"] < 0.2
    for kind, floor in THRESHOLDS.items():
        assert trained[kind] >= floor, (kind, trained)


def test_manifest_records_counts_steps_and_losses(built):
    cfg, ref = built
    manifest = json.loads((pipeline.Path(ref["path"]) / "manifest.json").read_text())
    stats = manifest["stats"]
    assert stats["counts"]["mix_rows"] == toy.world(ToyConfig())["counts"]["rows"]
    assert stats["counts"]["examples"] == stats["counts"]["mix_rows"] + sum(cfg.pretrain.extra.values())
    losses = [json.loads(line)["loss"] for line in (pipeline.Path(ref["path"]) / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] / 4


def test_held_out_scenes_are_not_training_scenes():
    cfg = PretrainConfig(extra={"gqa": 300, "ocr_vqa": 100})
    convs, _ = pretrain._conversations(cfg)
    train_images = {img for _, img in convs if isinstance(img, bytes)}
    held = pretrain.heldout(HELD_OUT_SEED, 60)
    assert len({k["kind"] for k in held}) == len(pretrain.HELDOUT_KINDS)
    for it in held:
        assert it["answer"] and it["question"].endswith(toy.SHORT)
        buf = __import__("io").BytesIO()
        toy.render(it["scene"]).save(buf, format="JPEG", quality=95)
        assert buf.getvalue() not in train_images


def test_extra_scenes_are_seeded():
    cfg = PretrainConfig(extra={"gqa": 20})
    a, _ = pretrain._conversations(cfg)
    b, _ = pretrain._conversations(cfg)
    c, _ = pretrain._conversations(cfg.model_copy(update={"seed": 1}))
    assert a == b and a != c


def test_config_rejects_unknown_sources_listing_them():
    with pytest.raises(ValidationError, match=r"unknown source\(s\) \['laion'\]"):
        PretrainConfig(sources=("coco", "laion"))
    with pytest.raises(ValidationError, match="extra maps a source"):
        PretrainConfig(extra={"gqa": -1})
    with pytest.raises(ValidationError):
        PretrainConfig(stepz=3)


def test_encode_masks_everything_but_answers():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy.model_dir(ToyConfig()))
    turns = [{"from": "human", "value": "What color is the circle?\n<image>"}, {"from": "gpt", "value": "red"},
             {"from": "human", "value": "How many circles are there?"}, {"from": "gpt", "value": "2"}]
    ids, labels = pretrain._encode(turns, tok, 4, 16, True)
    text = tok.decode(ids)
    assert text.startswith("<s>" + toy.SYSTEM + " USER: " + "<image>" * 16 + "\nWhat color is the circle? ASSISTANT: red</s>")
    assert text.endswith("USER: How many circles are there? ASSISTANT: 2</s>")
    assert tok.decode([t for t in labels if t != -100]) == " red</s> 2</s>"
    prompt_ids = tok(toy.prompt("What color is the circle?")).input_ids  # what generation sees
    prompt_ids[prompt_ids.index(4):prompt_ids.index(4) + 1] = [4] * 16
    assert ids[: len(prompt_ids)] == prompt_ids
    assert random  # (imported for symmetry with other toy tests)
