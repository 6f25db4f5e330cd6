"""The toy Vicuna: its text conversations (`toy.lm`), the `vicuna` stage, and the pretrain stage on its model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never touch the hub

import collections
import json
import re
from pathlib import Path

import pytest

from seva_tasks import pipeline, toy
from seva_tasks.base import resolve
from seva_tasks.config import PipelineConfig
from seva_tasks.llava.prompts import SEP2, SHORT_ANSWER, SYSTEMS
from seva_tasks.stages.pretrain import PretrainConfig
from seva_tasks.stages.tower import TowerConfig
from seva_tasks.stages.vicuna import VicunaConfig
from seva_tasks.toy import ToyConfig, gates, lm, tower
from seva_tasks.toy.scenes import SHAPES


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
    assert 0.4 * len(convs) < lettered < 0.6 * len(convs)  # CHOICE_SHARE + LOOKUP_SHARE (0.3 + 0.2) of them


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


def test_grid_captions_are_the_words_the_role_tower_aligns_and_answers_hold_on_them():
    """With a grid, the image's place holds one word per image token (`tower.grid_words`); answers stay true."""
    convs = lm.conversations(3, 600, grid=4)
    assert convs != lm.conversations(3, 600) and [c[1] for c in convs] == [c[1] for c in lm.conversations(3, 600)]
    checked = 0
    for c in convs:
        caption, question = c[0][0].removeprefix("USER: ").split("\n", 1)
        words, answer = caption.split(), c[1][0].removesuffix(SEP2).strip()
        assert len(words) == 16 and set(words) <= set(tower.ROLE_WORDS), caption
        if m := re.match(r"How many (\w+)s are there\?", question):
            assert answer == str(words.count(m.group(1)) // 2), (caption, question, answer)  # an object names its shape twice
            checked += 1
        elif m := re.fullmatch(r"What shape is the (\w+) object\?", question):  # the word after the colour
            assert answer == words[words.index(m.group(1)) + 1], (caption, question, answer)
            checked += 1
    assert checked > 40  # measured 57
    held = lm.heldout(0, 70, grid=4)
    assert [it["answer"] for it in held] == [it["answer"] for it in lm.heldout(0, 70)]
    assert all(len(it["segments"][0][0].split("\n")[0].split()) == 17 for it in held)  # "USER:" + 16 words


def test_vicuna_v1_conversations_are_the_prompt_the_image_model_is_asked_with_the_caption_for_the_image():
    """conv_template vicuna_v1: the gates' and benchmarks' prompt (`toy.prompt`, GQA's short-answer suffix, a lettered
    question's own instruction) with the caption where `<image>` is; the same scenes, questions and answers as bare."""
    bare, full = lm.conversations(0, 300, grid=4), lm.conversations(0, 300, grid=4, template="vicuna_v1")
    assert [c[1] for c in full] == [c[1] for c in bare]
    for b, f in zip(bare, full):
        caption, question = b[0][0].removeprefix("USER: ").removesuffix(" ASSISTANT:").split("\n", 1)
        asked = question if "\nA. " in question else f"{question}\n{SHORT_ANSWER}"
        assert f[0] == (toy.prompt(asked).replace("<image>", caption), False), f[0]
    assert 120 < sum(c[0][0].endswith(f"{SHORT_ANSWER} ASSISTANT:") for c in full) < 180  # GQA-style: half (157)
    held = lm.heldout(0, 70, 4, "vicuna_v1")
    assert [it["answer"] for it in held] == [it["answer"] for it in lm.heldout(0, 70, 4)]
    assert all(it["segments"][0][0].startswith(SYSTEMS["vicuna_v1"] + " USER: ") for it in held)
    with pytest.raises(ValueError, match="conv_template"):
        VicunaConfig(conv_template="llava_v1")


def test_both_formats_mixes_bare_and_vicuna_v1_conversations_and_checks_in_vicuna_v1():
    """conv_template both: each conversation bare or vicuna_v1 (about half each, drawn from the seed stream, so the
    same bytes every time); the held-out check asks in vicuna_v1, the format the image model is asked in."""
    both = lm.conversations(0, 300, grid=4, template="both")
    assert both == lm.conversations(0, 300, grid=4, template="both")
    v1 = [c for c in both if c[0][0].startswith(SYSTEMS["vicuna_v1"] + " USER: ")]
    bare = [c for c in both if c[0][0].startswith("USER: ")]
    assert len(v1) + len(bare) == 300 and 120 < len(v1) < 180, len(v1)
    assert all(c[0][0].endswith(" ASSISTANT:") and c[1][1] for c in both)
    quarter = lm.conversations(0, 300, grid=4, template="both", v1_share=0.25)
    assert 50 < sum(c[0][0].startswith(SYSTEMS["vicuna_v1"]) for c in quarter) < 100
    assert lm.heldout(0, 70, 4, "both") == lm.heldout(0, 70, 4, "vicuna_v1")
    assert VicunaConfig(conv_template="both", v1_share=0.25).v1_share == 0.25


def test_turns_add_the_mixs_further_rounds_to_the_same_conversations():
    """turns: a GQA-style conversation keeps its first round (same scene, same draws) and adds the mix's further
    questions about that caption, each answer in the loss and true of the caption; lettered ones stay one round."""
    one, four = lm.conversations(2, 300, grid=4), lm.conversations(2, 300, grid=4, turns=4)
    assert all(m[:len(o)] == o for o, m in zip(one, four))
    rounds = [sum(in_loss for _, in_loss in c) for c in four]
    assert max(rounds) == 4 and all(r == 1 for r, c in zip(rounds, four) if "\nA. " in c[0][0])
    assert 2.0 < sum(rounds) / len(rounds) < 3.0  # half the conversations are lettered (one round)
    colours = 0
    for c in four:
        caption = c[0][0].removeprefix("USER: ").split("\n", 1)[0].split()
        for (question, _), (answer, in_loss) in zip(c[2::2], c[3::2]):
            assert question.startswith("USER: ") and question.endswith(" ASSISTANT:") and in_loss
            if m := re.match(r"USER: What color is the (\w+)\?", question):
                assert caption[caption.index(m.group(1)) + 1] == answer.removesuffix(SEP2).strip()
                colours += 1
    assert colours > 20
    v1 = lm.conversations(2, 50, grid=4, turns=3, template="vicuna_v1", choice_share=0, lookup_share=0)
    assert all(q.endswith(f"\n{SHORT_ANSWER} ASSISTANT:") for c in v1 for q, in_loss in c if not in_loss)
    assert VicunaConfig(turns=4).turns == 4
    with pytest.raises(ValueError):
        VicunaConfig(turns=5)


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


def test_lookup_names_its_answer_and_the_shares_hold():
    """A lookup asks for an option by its value: its answer is that option's letter."""
    convs = lm.conversations(0, 600, choice_share=0.3, lookup_share=0.2)
    lookups = [c for c in convs if c[0][0].split("\n")[1].startswith("Which option is ")]
    lettered = [c for c in convs if "\nA. " in c[0][0]]
    assert 0.15 * 600 < len(lookups) < 0.25 * 600 and 0.42 * 600 < len(lettered) < 0.58 * 600
    for c in lookups:
        lines = c[0][0].split("\n")
        gold = lines[1].removeprefix("Which option is ").removesuffix("?")
        letter = c[1][0].removesuffix(SEP2).strip()
        assert lines[2 + "ABCD".index(letter)] == f"{letter}. {gold}", lines
        assert sum(line.endswith(f". {gold}") for line in lines[2:6]) == 1
    plain = lm.conversations(0, 600, choice_share=0.2, lookup_share=0.0)
    assert not any("Which option is " in c[0][0] for c in plain) and 0.13 * 600 < sum("\nA. " in c[0][0] for c in plain) < 0.27 * 600


def test_vicuna_config_rejects_shares_over_one():
    with pytest.raises(ValueError, match="exceed 1"):
        VicunaConfig(choice_share=0.7, lookup_share=0.4)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """vicuna (a short text phase), the tower on its model, then pretrain on the tower's, through the store."""
    toy.ensure(ToyConfig())
    cfg = PipelineConfig(data_dir=tmp_path_factory.mktemp("data"), toy=ToyConfig(), model=toy.model_dir(ToyConfig()),
                         vicuna=VicunaConfig(steps=150, heldout=35, logging_steps=5),
                         tower=TowerConfig(steps=20, heldout=64, logging_steps=5),
                         pretrain=PretrainConfig(freeze_tower=True, steps=10, extra={"gqa": 64}, heldout=35,
                                                 logging_steps=5))
    refs = {"vicuna": pipeline.run_stage(cfg, "vicuna", {})}
    refs["tower"] = pipeline.run_stage(cfg, "tower", refs)
    refs["pretrain"] = pipeline.run_stage(cfg, "pretrain", refs)
    return cfg, refs


def _stats(ref: dict) -> dict:
    return json.loads((Path(ref["path"]) / "manifest.json").read_text())["stats"]


def test_vicuna_trains_text_then_the_tower_then_pretrain_with_it_frozen(stages):
    """LLaVA's order: the language model (Vicuna), the tower (CLIP), each its own stage, then instruction tuning
    with the tower kept as trained."""
    import torch
    from safetensors.torch import load_file

    cfg, refs = stages
    stats = _stats(refs["vicuna"])
    assert stats["steps"] == 150 and stats["counts"]["conversations"] == 150 * 32
    assert set(stats["heldout"]["accuracy"]) == {*lm.KINDS, "all"} and stats["heldout"]["questions"] == 35
    lines = [json.loads(x) for x in (Path(refs["vicuna"]["path"]) / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines]
    assert {x["phase"] for x in lines} == {"vicuna"} and len(lines) == 30
    assert losses[-1] < losses[0] - 0.8  # the text phase learns (measured 7.13 -> ~1.0 in 150 steps at 1e-3)
    assert stats["final_loss"] == losses[-1]
    assert pipeline.model_input(cfg, "tower", refs) == Path(refs["vicuna"]["path"]) / "model"
    assert pipeline.model_input(cfg, "pretrain", refs) == Path(refs["tower"]["path"]) / "model"
    manifest = json.loads((Path(refs["pretrain"]["path"]) / "manifest.json").read_text())
    assert manifest["model"]["path"] == str(Path(refs["tower"]["path"]) / "model")
    tower_stats = _stats(refs["tower"])
    assert tower_stats["steps"] == 20 and set(tower_stats["heldout"]["accuracy"]) == {"shape", "color", "position", "vertical", "empty"}
    phases = {json.loads(x)["phase"] for x in (Path(refs["pretrain"]["path"]) / "metrics.jsonl").read_text().splitlines()}
    assert phases == {"instruct"}
    weights = {s: load_file(Path(refs[s]["path"]) / "model" / "model.safetensors") for s in ("vicuna", "tower", "pretrain")}
    vision = [k for k in weights["tower"] if k.startswith("vision_tower.")]
    assert vision and all(torch.equal(weights["tower"][k], weights["pretrain"][k]) for k in vision)  # frozen
    assert not all(torch.equal(weights["vicuna"][k], weights["tower"][k]) for k in vision)  # trained by the tower stage
    lm_keys = [k for k in weights["tower"] if k.startswith("language_model.")]
    assert all(torch.equal(weights["vicuna"][k], weights["tower"][k]) for k in lm_keys)  # the tower leaves the LM alone
    assert not all(torch.equal(weights["tower"][k], weights["pretrain"][k]) for k in lm_keys)  # instruction tuning moves it


def test_a_pretrain_change_keeps_vicuna_and_a_vicuna_change_reaches_pretrain(stages):
    """The point of their own stages: a pretrain sweep (an experiment's seeds) shares one LM and one tower."""
    cfg, refs = stages
    assert pipeline.nodes(cfg)[:4] == ("vicuna", "tower", "pretrain", "sample")
    assert pipeline.deps(cfg, "tower") == {"model": "vicuna"} and pipeline.deps(cfg, "pretrain") == {"model": "tower"}
    assert pipeline.deps(cfg, "generate")["model"] == "pretrain"
    other_pre = cfg.model_copy(update={"pretrain": cfg.pretrain.model_copy(update={"seed": 1})})
    assert pipeline.key_for(other_pre, "vicuna", {}) == refs["vicuna"]["key"]
    assert pipeline.key_for(other_pre, "tower", {"vicuna": refs["vicuna"]}) == refs["tower"]["key"]
    assert pipeline.key_for(other_pre, "pretrain", {"tower": refs["tower"]}) != refs["pretrain"]["key"]
    status = {r["stage"]: r["state"] for r in pipeline.status(other_pre, "pretrain")}
    assert status == {"vicuna": "fresh", "tower": "fresh", "pretrain": "stale"}
    other_lm = cfg.model_copy(update={"vicuna": cfg.vicuna.model_copy(update={"steps": 151})})
    assert pipeline.key_for(other_lm, "vicuna", {}) != refs["vicuna"]["key"]
    status = {r["stage"]: r["state"] for r in pipeline.status(other_lm, "pretrain")}
    assert status == {"vicuna": "stale", "tower": "stale", "pretrain": "stale"}
    again = pipeline.run_stage(cfg, "vicuna", {})  # same config: the published artifact, not a rerun
    assert again["key"] == refs["vicuna"]["key"] and again["digest"] == refs["vicuna"]["digest"]
    without = cfg.model_copy(update={"vicuna": None, "tower": None, "pretrain": cfg.pretrain.model_copy(update={"freeze_tower": False})})
    assert pipeline.deps(without, "pretrain") == {} and pipeline.nodes(without)[0] == "pretrain"


def test_gates_are_measured_and_judged_in_the_manifest(stages):
    """Every gate is written with its value, threshold and verdict, from the measurements beside it."""
    cfg, refs = stages
    stats = _stats(refs["pretrain"])
    g, held, pope = stats["gates"], stats["heldout"], stats["pope"]
    assert set(g) == set(gates.THRESHOLDS) and all({"value", "threshold", "passed"} <= set(v) for v in g.values())
    # the held-out shares and the noise drop carry their SE (held-out questions split evenly over the kinds)
    n, p = held["questions"], held["accuracy"]["all"]
    assert g["heldout_all"]["se"] == pytest.approx((p * (1 - p) / n) ** 0.5, abs=1e-4)
    # the drop's per-question differences d are -1, 0 or 1 with mean m, so their variance is at least |m| - m^2
    m, se = g["noise_drop"]["value"], g["noise_drop"]["se"]
    assert ((abs(m) - m * m) / (n - 1)) ** 0.5 - 1e-3 <= se <= (1 / (n - 1)) ** 0.5 + 1e-3
    assert "se" in g["heldout_shape"] and "se" not in g["pope_f1"]
    world_pope = (resolve(cfg.pretrain.pope) / "llava_pope_test.jsonl").read_text().splitlines()
    assert pope["questions"] == len(world_pope) > 100 and pope["noise_step"] == 500  # the world's POPE, every question
    assert g["pope_f1"]["value"] == pope["clean"]["f1"] and g["pope_yes_ratio"]["value"] == pope["clean"]["yes_ratio"]
    assert g["noise_drop"]["value"] == pytest.approx(held["accuracy"]["all"] - held["noised"]["all"], abs=1e-4)
    assert g["noise_yes_shift"]["value"] == pytest.approx(pope["noised"]["yes_ratio"] - pope["clean"]["yes_ratio"], abs=1e-4)
    assert {k: g["heldout_all"][k] for k in ("value", "threshold", "passed")} == {
        "value": held["accuracy"]["all"], "threshold": ">= 0.85", "passed": held["accuracy"]["all"] >= 0.85}
    assert 0 <= pope["noised"]["yes_ratio"] <= 1 and set(held["noised"]) == set(held["accuracy"])


def test_vicuna_changes_only_the_language_model(tmp_path):
    """No image goes in, so the vision tower and projector keep their weights, bit for bit."""
    from safetensors.torch import load_file

    from seva_tasks.stages import vicuna

    toy.ensure(ToyConfig())
    base = toy.model_dir(ToyConfig())
    stats = vicuna.run(VicunaConfig(steps=40, heldout=0, logging_steps=10), {"model": base}, tmp_path)
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "model" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {k for k in before if not (before[k] == after[k]).all()}
    assert changed and all(k.startswith(("language_model.", "lm_head.")) for k in changed), sorted(changed)[:5]
    assert any(k.startswith("language_model.model.layers.") for k in changed)
    assert stats["steps"] == 40 and stats["heldout"]["questions"] == 0
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted(p.name for p in base.iterdir())


def test_v1_steps_continue_the_same_model_in_vicuna_v1_on_a_fresh_stream(tmp_path):
    """vicuna.v1_steps: the first phase is the run without them, step for step; then more steps at their own peak
    rate, on conversations in vicuna_v1 from a stream the first phase never saw."""
    from seva_tasks.stages import vicuna

    toy.ensure(ToyConfig())
    base = toy.model_dir(ToyConfig())
    short = VicunaConfig(steps=20, heldout=0, logging_steps=5, warmup_steps=0)  # no warmup: the logged rates show each peak
    vicuna.run(short, {"model": base}, tmp_path / "a")
    stats = vicuna.run(short.model_copy(update={"v1_steps": 10, "v1_learning_rate": 3e-4}), {"model": base}, tmp_path / "b")
    a, b = ([json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in "ab")
    assert [r for r in b if r["phase"] == "vicuna"] == a and len(a) == 4
    then = [r for r in b if r["phase"] == "vicuna_v1"]
    assert len(then) == 2 and 1e-4 < max(r["learning_rate"] for r in then) <= 3e-4 < max(r["learning_rate"] for r in a)
    assert stats["counts"]["conversations"] == 30 * short.batch_size
    first, more = lm.conversations(0, 200), lm.conversations("0:v1", 200, template="vicuna_v1")
    assert all(c[0][0].startswith(SYSTEMS["vicuna_v1"]) for c in more)
    captions = ({c[0][0].split("USER: ", 1)[1].split("\n")[0] for c in convs} for convs in (first, more))
    busy = [{c for c in cs if ", " in c} for cs in captions]  # 3-4 objects: a repeat is not chance
    assert len(busy[1]) > 50 and not busy[0] & busy[1]


def test_checks_write_when_each_kind_forms_and_leave_the_run_alone(tmp_path):
    """vicuna.check_every: the text check every N steps and at the last, as metrics.jsonl `check` rows, on questions
    of their own stream; the run's weights are the same bytes as without."""
    import torch
    from safetensors.torch import load_file

    from seva_tasks.stages import vicuna

    toy.ensure(ToyConfig())
    base = toy.model_dir(ToyConfig())
    plain = VicunaConfig(steps=60, v1_steps=10, heldout=35, logging_steps=20)
    for name, c in {"plain": plain, "checked": plain.model_copy(update={"check_every": 25})}.items():
        vicuna.run(c, {"model": base}, tmp_path / name)
    weights = [load_file(tmp_path / name / "model" / "model.safetensors") for name in ("plain", "checked")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    rows = [json.loads(x) for x in (tmp_path / "checked" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r and r["phase"] == "vicuna"] == [20, 40, 60]
    checks = [r for r in rows if "check" in r]
    assert [(r["phase"], r["step"]) for r in checks] == [("vicuna", 25), ("vicuna", 50), ("vicuna", 60), ("vicuna_v1", 10)]
    assert all(set(r["check"]) == {*lm.KINDS, "all"} for r in checks)
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    published = LlavaForConditionalGeneration.from_pretrained(tmp_path / "checked" / "model", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tmp_path / "checked" / "model")
    last = lm.heldout(0, 35, template="vicuna_v1", stream="lm-check")  # the last phase's format
    assert lm.accuracy(published, tok, last) == checks[-1]["check"]  # the published weights are the last checked
    assert not (tmp_path / "plain" / "metrics.jsonl").read_text().count('"check"')


def test_bindings_ask_the_colour_after_a_unique_shape_in_the_grid_caption():
    """`lm.bindings`: the lookup that needs the caption's word order (the word after the shape), seeded."""
    convs = lm.bindings(0, 300, grid=4)
    assert convs == lm.bindings(0, 300, grid=4) and convs != lm.bindings(1, 300, grid=4)
    several = 0
    for c in convs:
        caption, question = c[0][0].removeprefix("USER: ").split("\n", 1)
        shape = re.fullmatch(r"What color is the (\w+)\? ASSISTANT:", question).group(1)
        words, answer = caption.split(), c[1][0].removesuffix(SEP2).strip()
        cells = [words[k:k + 4] for k in range(0, 16, 4)]  # shape, colour, shape, side (tower.ROLES)
        owners = [cell for cell in cells if cell[0] == shape and cell[2] == shape]
        assert len(owners) == 1 and owners[0][1] == answer, (caption, question, answer)
        objects = [cell for cell in cells if cell[0] == cell[2] and cell[0] in SHAPES]
        several += len({cell[1] for cell in objects}) > 1  # another colour to confuse it with: binding, not the only colour word
        assert len(objects) > 1  # a lone object's colour is the only colour word: no lookup to learn
    assert several > 0.6 * len(convs)


def test_compositions_ask_the_gates_lettered_choice_with_its_two_parts_and_answer_truly():
    """`lm.compositions`: colour by shape, the held-out gate's lettered choice (that colour among four) and lettered
    lookups about scenes of several objects, seeded; every answer true of its caption."""
    convs = lm.compositions(0, 600, grid=4)
    assert convs == lm.compositions(0, 600, grid=4) and convs != lm.compositions(1, 600, grid=4)
    kinds = collections.Counter()
    for c in convs:
        caption, question = c[0][0].removeprefix("USER: ").removesuffix(" ASSISTANT:").split("\n", 1)
        words, answer = caption.split(), c[1][0].removesuffix(SEP2).strip()
        cells = [words[k:k + 4] for k in range(0, 16, 4)]  # shape, colour, shape, side (tower.ROLES)
        objects = [cell for cell in cells if cell[0] == cell[2] and cell[0] in SHAPES]
        assert len(objects) > 1, caption
        first, *options = question.split("\n")
        letters = {o[0]: o[3:] for o in options if o[1:3] == ". "}
        if lookup := re.fullmatch(r"Which option is (\w+)\?", first):
            kinds["lookup"] += 1
            assert letters[answer] == lookup.group(1)
            continue
        shape = re.fullmatch(r"What color is the (\w+)\?", first).group(1)
        owners = [cell for cell in objects if cell[0] == shape]
        assert len(owners) == 1, (caption, question)
        if letters:  # the gate's form: four colours, the owner's among them, answered by its letter
            kinds["choice"] += 1
            assert len(letters) == 4 and letters[answer] == owners[0][1], (caption, question, answer)
        else:
            kinds["color"] += 1
            assert answer == owners[0][1]
    # one draw among the scene's questions: a lookup every scene, a colour per unique shape, the gate's choice only
    # when its random object's shape is unique (recall.py's cc-* mix: 56 / 33 / 11 %)
    assert kinds["lookup"] > kinds["color"] > kinds["choice"] > 0.05 * len(convs), kinds
    assert not any(c[0][0].count("Which option is") for c in lm.compositions(0, 200, grid=4, lookups=False))


def test_heldout_by_objects_splits_each_kind_into_lone_and_several():
    items = lm.heldout(0, 210, grid=4, kinds=lm.BINDING, by_objects=True, stream="lm-binding")
    assert {it["kind"] for it in items} == {f"{k}{n}" for k in lm.BINDING for n in "12"}
    for it in items:
        caption = it["segments"][0][0].removeprefix("USER: ").split("\n")[0].split()
        objects = sum(caption[k] == caption[k + 2] and caption[k] in SHAPES for k in range(0, 16, 4))
        assert it["kind"].endswith("2" if objects > 1 else "1"), (caption, it["kind"])
    plain = lm.heldout(0, 210, grid=4, kinds=lm.BINDING, stream="lm-binding")
    assert [it["answer"] for it in plain] == [it["answer"] for it in items]


def test_bind_steps_come_first_at_a_constant_rate_and_the_manifest_splits_binding(tmp_path):
    """vicuna.bind_steps: colour-by-shape alone first (phase "bind", no decay), with compose_steps then the gate's
    lettered choice with its parts (phase "compose", no decay), then the mix's phases as before;
    the manifest's `binding` accuracy per kind on lone objects and on several."""
    from seva_tasks.stages import vicuna

    toy.ensure(ToyConfig())
    base = toy.model_dir(ToyConfig())
    cfg = VicunaConfig(bind_steps=20, compose_steps=10, steps=20, heldout=70, logging_steps=5, warmup_steps=0,
                       grid_caption=True)
    stats = vicuna.run(cfg, {"model": base}, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    bind, compose, mix_ = ([r for r in rows if r["phase"] == p] for p in ("bind", "compose", "vicuna"))
    assert [r["step"] for r in bind] == [5, 10, 15, 20] and len({r["learning_rate"] for r in bind}) == 1
    assert [r["step"] for r in compose] == [5, 10] and compose[0]["learning_rate"] == compose[1]["learning_rate"]
    assert [r["step"] for r in mix_] == [5, 10, 15, 20] and mix_[-1]["learning_rate"] < mix_[0]["learning_rate"]
    assert rows.index(bind[-1]) < rows.index(compose[0]) < rows.index(compose[-1]) < rows.index(mix_[0])
    assert stats["counts"]["conversations"] == 50 * cfg.batch_size
    assert set(stats["heldout"]["binding"]) == {"all", *(f"{k}{n}" for k in lm.BINDING for n in "12")}
