"""Stage `pretrain`: cached like every stage, a model dir that transformers (and vLLM) load, and a
pretrained toy LLaVA that answers held-out questions well above chance."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never touch the hub

import io
import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from seva_tasks import pipeline, toy
from seva_tasks.config import PipelineConfig
from seva_tasks.llava.prompts import SHORT_ANSWER, SYSTEMS
from seva_tasks.stages import pretrain
from seva_tasks.stages.pretrain import PretrainConfig
from seva_tasks.toy import ToyConfig, heldout, lm, mix
from seva_tasks.toy.scenes import COLORS, GENRES, SHAPES

# A short run on the two sources whose questions are learned first (book genres are told by the
# cover colour after ~300 steps; colours of small shapes take ~800). The preset trains longer.
FAST = dict(steps=400, extra={"ocr_vqa": 800, "gqa": 800}, heldout=0)
HELD_OUT_SEED = 4242  # not the stage's seed: these scenes were never seen in training
N_HELD_OUT = 160  # 20 per question kind


def _config(data_dir: Path, model: Path | None = None, **pretrain_cfg) -> PipelineConfig:
    return PipelineConfig(data_dir=data_dir, toy=ToyConfig(), model=model or toy.model_dir(ToyConfig()),
                          pretrain=PretrainConfig(**pretrain_cfg))


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
    # The base model is an input by content: a byte-identical copy elsewhere keys the same, an edit does not.
    copy = tmp_path / "model"
    shutil.copytree(toy.model_dir(ToyConfig()), copy)
    assert pipeline.key_for(_config(cfg.data_dir, copy, **FAST), "pretrain", {}) == ref["key"]
    (copy / "generation_config.json").write_text((copy / "generation_config.json").read_text() + "\n")
    assert pipeline.key_for(_config(cfg.data_dir, copy, **FAST), "pretrain", {}) != ref["key"]
    manifest = json.loads((Path(ref["path"]) / "manifest.json").read_text())
    assert manifest["model"]["path"] == str(toy.model_dir(ToyConfig()))


def test_the_gates_pope_is_an_input_by_content_and_a_missing_one_is_named(built, tmp_path):
    """The POPE gates ask the world's POPE files: an edited label rekeys the stage, a missing file fails up front."""
    from seva_tasks.base import resolve
    from seva_tasks.errors import InputError

    cfg, _ = built
    pope = tmp_path / "pope"
    shutil.copytree(resolve(PretrainConfig().pope), pope)
    gated = _config(cfg.data_dir, **{**FAST, "heldout": 8, "pope": pope})
    key = pipeline.key_for(gated, "pretrain", {})
    assert key != pipeline.key_for(_config(cfg.data_dir, **{**FAST, "heldout": 8, "pope": None}), "pretrain", {})
    labels = pope / "coco" / "coco_pope_random.json"
    labels.write_text(labels.read_text().replace('"label": "yes"', '"label": "no"', 1))
    assert pipeline.key_for(gated, "pretrain", {}) != key
    (pope / "llava_pope_test.jsonl").unlink()
    with pytest.raises(InputError, match=r"POPE not found: .*pope/llava_pope_test\.jsonl"):
        pretrain.run(gated.pretrain, {"model": toy.model_dir(ToyConfig())}, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was trained or written


def test_pretrain_publishes_a_full_model_dir_with_vllm_names(built):
    from safetensors import safe_open

    _, ref = built
    out, base = Path(ref["path"]) / "model", toy.model_dir(ToyConfig())
    for name in ("config.json", "tokenizer.json", "processor_config.json", "preprocessor_config.json", "chat_template.json",
                 "generation_config.json"):
        assert (out / name).read_bytes() == (base / name).read_bytes(), name
    with safe_open(out / "model.safetensors", "pt") as f, safe_open(base / "model.safetensors", "pt") as g:
        names = sorted(f.keys())
        assert names == sorted(g.keys())  # llava-hf names: vision_tower.vision_model.*
        assert any(k.startswith("vision_tower.vision_model.") for k in names)
        assert {str(f.get_tensor(k).dtype) for k in names} == {"torch.float32"}
        changed = {k for k in names if not f.get_tensor(k).equal(g.get_tensor(k))}
    # Every tower is trained: the whole language model and projector, and the vision layers LLaVA reads
    # (the penultimate layer's output; the last layer and post-layernorm get no gradient).
    assert {k for k in names if k.startswith(("language_model.", "multi_modal_projector."))} <= changed
    assert {k for k in names if ".embeddings." in k or ".layers.0." in k} <= changed


VALID = {"color": set(COLORS), "shape": set(SHAPES), "count": {str(n) for n in range(10)}, "side": {"left", "right"},
         "exists": {"yes", "no"}, "pope": {"yes", "no"}, "choice": set("abcd"), "genre": {g.lower() for g in GENRES}}


def test_pretrained_model_answers_held_out_questions_well_above_chance(built):
    _, ref = built
    items = heldout.heldout(HELD_OUT_SEED, N_HELD_OUT)
    model, proc = heldout.load(Path(ref["path"]) / "model")
    answers = heldout.ask(model, proc, items)
    trained = heldout.accuracy(model, proc, items)
    base = heldout.accuracy(*heldout.load(toy.model_dir(ToyConfig())), items)
    print(f"\nheld-out accuracy\n  random base:  {base}\n  {FAST['steps']} steps:    {trained}\n"
          f"  majority:     {heldout.majority(items)}")
    assert base["all"] < 0.1  # random weights answer nothing right
    # Instruction-following: nearly every answer is one of its question's possible answers.
    in_format = [a.strip().rstrip(".").lower() in VALID[it["kind"]] for it, a in zip(items, answers)]
    assert sum(in_format) >= 0.9 * len(items), [a for a, ok in zip(answers, in_format) if not ok][:10]
    assert trained["genre"] >= 0.4  # chance 1/10; the cover colour and icon tell the genre


def test_manifest_records_counts_steps_and_losses(built):
    cfg, ref = built
    manifest = json.loads((Path(ref["path"]) / "manifest.json").read_text())
    stats = manifest["stats"]
    assert stats["counts"]["mix_rows"] == toy.manifest(ToyConfig())["counts"]["rows"]
    assert stats["counts"]["examples"] == stats["counts"]["mix_rows"] + sum(cfg.pretrain.extra.values())
    losses = [json.loads(line)["loss"] for line in (Path(ref["path"]) / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] / 4


def test_held_out_scenes_are_not_training_scenes():
    cfg = PretrainConfig(extra={"gqa": 300, "ocr_vqa": 100})
    convs, _ = pretrain._conversations(cfg)
    train_images = {img for _, img in convs if isinstance(img, bytes)}
    held = heldout.heldout(HELD_OUT_SEED, 60)
    assert len({k["kind"] for k in held}) == len(heldout.HELDOUT_KINDS)
    for it in held:
        suffix = "directly." if it["kind"] == "choice" else SHORT_ANSWER
        assert it["answer"] and it["question"].endswith(suffix)
        buf = io.BytesIO()
        toy.render(it["scene"]).save(buf, format="JPEG", quality=95)
        assert buf.getvalue() not in train_images


def test_extra_scenes_are_seeded():
    cfg = PretrainConfig(extra={"gqa": 20})
    a, _ = pretrain._conversations(cfg)
    b, _ = pretrain._conversations(cfg)
    c, _ = pretrain._conversations(cfg.model_copy(update={"seed": 1}))
    assert a == b and a != c


def test_yes_share_sets_how_often_the_extra_scenes_existence_questions_are_yes():
    toy.ensure(ToyConfig())  # the mix it reads (sources=(): none of its rows)

    def share(**kw) -> float:
        convs, _ = pretrain._conversations(PretrainConfig(sources=(), extra={"gqa": 1000}, **kw))
        answers = [a["value"] for turns, _ in convs for q, a in zip(turns[::2], turns[1::2])
                   if q["value"].startswith("Is there a ")]
        assert len(answers) > 1000
        return sum(a == "yes" for a in answers) / len(answers)

    assert abs(share() - mix.YES_SHARE) < 0.04 and abs(share(yes_share=0.85) - 0.85) < 0.04  # SE ~0.015
    with pytest.raises(ValidationError, match="yes_share"):
        PretrainConfig(yes_share=1.5)


def test_config_rejects_unknown_sources_listing_them():
    with pytest.raises(ValidationError, match=r"unknown source\(s\) \['laion'\]"):
        PretrainConfig(sources=("coco", "laion"))
    with pytest.raises(ValidationError, match="extra maps a source"):
        PretrainConfig(extra={"gqa": -1})
    with pytest.raises(ValidationError):
        PretrainConfig(stepz=3)


def test_encode_masks_everything_but_answers():
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy.model_dir(ToyConfig()))
    image = AutoConfig.from_pretrained(toy.model_dir(ToyConfig())).image_token_index
    turns = [{"from": "human", "value": "What color is the circle?\n<image>"}, {"from": "gpt", "value": "red"},
             {"from": "human", "value": "How many circles are there?"}, {"from": "gpt", "value": "2"}]
    ids, labels = pretrain._encode(turns, tok, image, 16, True)
    text = tok.decode(ids)
    assert text.startswith("<s> " + SYSTEMS["vicuna_v1"] + " USER: " + "<image>" * 16 + "\nWhat color is the circle? ASSISTANT: red</s>")
    assert text.endswith("USER: How many circles are there? ASSISTANT: 2</s>")
    assert tok.convert_ids_to_tokens([t for t in labels if t != -100]) == ["\u2581red", "</s>", "\u25812", "</s>"]
    prompt_ids = tok(toy.prompt("What color is the circle?")).input_ids  # what generation sees
    prompt_ids[prompt_ids.index(image):prompt_ids.index(image) + 1] = [image] * 16
    assert ids[: len(prompt_ids)] == prompt_ids


def test_text_mixes_the_vicunas_conversations_in_this_stages_format():
    """pretrain.text: fresh text conversations (no pixels) of toy.lm's kind, in vicuna_v1 as the image rows are, with
    loss on the answer only; none with text 0."""
    from transformers import AutoConfig, AutoProcessor

    base = toy.model_dir(ToyConfig())
    processor, config = AutoProcessor.from_pretrained(base), AutoConfig.from_pretrained(base)
    cfg = PretrainConfig(sources=(), extra={"gqa": 20})
    images, counts = pretrain._examples(cfg, processor, config)
    mixed, mixed_counts = pretrain._examples(cfg.model_copy(update={"text": 30}), processor, config)
    assert "text" not in counts and mixed_counts["text"] == 30 and len(mixed) == len(images) + 30
    assert [e["input_ids"] for e in mixed[:len(images)]] == [e["input_ids"] for e in images]
    assert all(e["pixels"] is None for e in mixed[len(images):])
    tok = processor.tokenizer
    for e in mixed[len(images):]:
        text = tok.decode(e["input_ids"])
        assert text.startswith("<s> " + SYSTEMS["vicuna_v1"] + " USER: ") and "<image>" not in text
        answer = tok.decode([t for t in e["labels"] if t != -100])
        assert text.endswith(" ASSISTANT: " + answer) and answer.endswith("</s>")
    replayed = lm.examples(tok, cfg.seed, 30, lookup_share=0.0, grid=4, template="vicuna_v1")  # the vicuna's stream
    assert [e["input_ids"] for e in mixed[len(images):]] != [e["input_ids"] for e in replayed]  # fresh scenes instead
