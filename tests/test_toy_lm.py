"""The toy Vicuna (`toy.lm`): its text conversations, and the pretrain stage's language-model and vision phases."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never touch the hub

import json
import re
from pathlib import Path

import pytest

from seva_tasks import pipeline, toy
from seva_tasks.config import PipelineConfig
from seva_tasks.llava.prompts import SEP2, SHORT_ANSWER, SYSTEMS
from seva_tasks.stages.pretrain import PretrainConfig
from seva_tasks.toy import ToyConfig, gates, lm


def test_conversations_are_short_seeded_and_cover_the_question_types():
    convs = lm.conversations(0, 400)
    assert len(convs) == 400 and convs == lm.conversations(0, 400) and convs != lm.conversations(1, 400)
    prompts = [c[0][0] for c in convs]
    assert all(p.startswith("USER: A ") and p.endswith(" ASSISTANT:") for p in prompts)
    assert not any(SYSTEMS["vicuna_v1"] in p or SHORT_ANSWER in p for p in prompts)  # short contexts only
    assert all(c[0][1] is False and c[1][1] is True and c[1][0].endswith(SEP2) for c in convs)
    asked = {re.search(r"\n(\w+ \w+)", p).group(1) for p in prompts}
    assert {"Is there", "How many", "What color", "What shape", "On which"} <= asked
    lettered = sum("A. " in p for p in prompts)
    assert 0.1 * len(convs) < lettered < 0.3 * len(convs)  # CHOICE_SHARE (0.2) of them


def test_answers_are_true_of_their_caption():
    """The caption stands for the image, so every answer must follow from it: counts, then existence."""
    checked = 0
    for c in lm.conversations(3, 600):
        caption, question = c[0][0].removeprefix("USER: ").split("\n", 1)
        answer = c[1][0].removesuffix(SEP2).strip()
        if m := re.match(r"How many (\w+)s are there\?", question):
            assert answer == str(caption.count(f" {m.group(1)} on the ")), (caption, question, answer)
            checked += 1
        elif m := re.match(r"Is there a (\w+) in the image\?", question):
            assert answer == ("yes" if f" {m.group(1)} on the " in caption else "no"), (caption, question, answer)
            checked += 1
    assert checked > 100


def test_heldout_items_are_fresh_and_caption_based():
    items = lm.heldout(0, 70)
    assert {it["kind"] for it in items} == set(lm.KINDS) and "genre" not in lm.KINDS
    train = {c[0][0] for c in lm.conversations(0, 2000)}
    # Own seed stream: a held-out prompt repeats a training one only by chance, and only for the few
    # distinct scenes of one or two objects (shape families make two-object scenes repeat too): never
    # one of three or four (a caption that lists them with commas).
    repeats = [it["segments"][0][0] for it in items if it["segments"][0][0] in train]
    assert len(repeats) < 0.1 * len(items) and not any("," in r.split("\n")[0] for r in repeats), repeats
    assert all(it["segments"][1][0] == f" {it['answer']}{SEP2}" for it in items)
    assert all(it["answer"].isdigit() for it in items if it["kind"] == "count")


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """The pretrain stage with a short language-model phase, through the store."""
    toy.ensure(ToyConfig())
    cfg = PipelineConfig(data_dir=tmp_path_factory.mktemp("data"), toy=ToyConfig(), model=toy.model_dir(ToyConfig()),
                         pretrain=PretrainConfig(lm_steps=150, tower_steps=20, steps=10, extra={"gqa": 64}, heldout=35,
                                                  gate_pope=40, logging_steps=5))
    return cfg, pipeline.run_stage(cfg, "pretrain", {})


def test_language_model_phase_runs_first_and_is_recorded(stage):
    """Phases in LLaVA's order: the language model (Vicuna), the vision tower (CLIP), instruction tuning."""
    cfg, ref = stage
    stats = json.loads((Path(ref["path"]) / "manifest.json").read_text())["stats"]
    assert stats["lm"]["steps"] == 150 and stats["lm"]["conversations"] == 150 * 32
    assert set(stats["lm"]["heldout"]["accuracy"]) == {*lm.KINDS, "all"} and stats["lm"]["heldout"]["questions"] == 35
    lines = [json.loads(x) for x in (Path(ref["path"]) / "metrics.jsonl").read_text().splitlines()]
    phases = [x["phase"] for x in lines]
    assert phases == sorted(phases, key=["lm", "tower", "instruct"].index) and set(phases) == {"lm", "tower", "instruct"}
    assert stats["tower"]["steps"] == 20 and set(stats["tower"]["heldout"]) == {"shape", "color", "position", "vertical", "empty", "objects"}
    lm_losses = [x["loss"] for x in lines if x["phase"] == "lm"]
    assert lm_losses[-1] < lm_losses[0] - 0.8  # the text phase learns (measured 7.13 -> ~1.0 in 150 steps at 1e-3)
    assert stats["final_loss"] == [x["loss"] for x in lines if x["phase"] == "instruct"][-1]
    other = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"lm_steps": 151})})
    assert pipeline.key_for(other, "pretrain", {}) != ref["key"]


def test_gates_are_measured_and_judged_in_the_manifest(stage):
    """Every gate is written with its value, threshold and verdict, from the measurements beside it."""
    _, ref = stage
    stats = json.loads((Path(ref["path"]) / "manifest.json").read_text())["stats"]
    g, held, pope = stats["gates"], stats["heldout"], stats["pope"]
    assert set(g) == set(gates.THRESHOLDS) and all(set(v) == {"value", "threshold", "passed"} for v in g.values())
    assert pope["questions"] == 40 and pope["noise_step"] == 500
    assert g["pope_f1"]["value"] == pope["clean"]["f1"] and g["pope_yes_ratio"]["value"] == pope["clean"]["yes_ratio"]
    assert g["noise_drop"]["value"] == pytest.approx(held["accuracy"]["all"] - held["noised"]["all"], abs=1e-4)
    assert g["heldout_all"] == {"value": held["accuracy"]["all"], "threshold": ">= 0.85",
                                "passed": held["accuracy"]["all"] >= 0.85}
    assert 0 <= pope["noised"]["yes_ratio"] <= 1 and set(held["noised"]) == set(held["accuracy"])


def test_language_model_phase_changes_only_the_language_model(tmp_path):
    """No image goes in, so the vision tower and projector keep their weights, bit for bit."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from seva_tasks.stages import pretrain

    toy.ensure(ToyConfig())
    base = toy.model_dir(ToyConfig())
    model = LlavaForConditionalGeneration.from_pretrained(base, local_files_only=True, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = PretrainConfig(lm_steps=40, heldout=0, logging_steps=10)
    history, stats = pretrain._pretrain_lm(cfg, model, AutoProcessor.from_pretrained(base, local_files_only=True), tmp_path)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("model.language_model.", "lm_head.")) for k in changed), sorted(changed)[:5]
    assert any(k.startswith("model.language_model.layers.") for k in changed)
    assert stats["steps"] == 40 and [r["phase"] for r in history] == ["lm"] * len(history)
