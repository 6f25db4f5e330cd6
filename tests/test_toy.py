"""The embedded toy world: byte-determinism, the real 665k schema, scene records, the tiny LLaVA in
transformers and (slow, if `.venv-vllm` exists) the same greedy tokens from vLLM."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never touch the hub

import pytest
from PIL import Image
from pydantic import ValidationError

from seva_tasks import toy
from seva_tasks.base import ROOT
from seva_tasks.engines import EngineConfig
from seva_tasks.engines.vllm_worker import worker_env
from seva_tasks.errors import ConfigError
from seva_tasks.store import file_sha256
from seva_tasks.toy import ToyConfig
from seva_tasks.toy.mix import PREFIXES
from seva_tasks.toy.scenes import COLORS, SHAPES

ENGINE_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
SMALL = {"books": 4, "signs": 4, "scenes": 2, "text_only": 2}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> ToyConfig:
    """The default-size world, built once for this module in a temp dir."""
    cfg = ToyConfig(root=tmp_path_factory.mktemp("toy") / "world")
    toy.ensure(cfg)
    return cfg


@pytest.fixture(scope="module")
def four_heads(tmp_path_factory) -> ToyConfig:
    """A small world whose language model has 4 heads of dim 32 at width 64 (`lm_heads`)."""
    cfg = ToyConfig(root=tmp_path_factory.mktemp("toy") / "heads", lm_heads=4, layers=4, **SMALL)
    toy.ensure(cfg)
    return cfg


def _rows(cfg: ToyConfig) -> list[dict]:
    return json.loads(toy.mix_path(cfg).read_text())


def _first_question(row: dict) -> str:
    return row["conversations"][0]["value"].replace("<image>\n", "").replace("\n<image>", "")


# ----------------------------------------------------------------------------- building


def test_same_seed_gives_byte_identical_files(world, tmp_path):
    again = world.model_copy(update={"root": tmp_path / "again"})
    toy.ensure(again)
    ours = {p.relative_to(toy.root_dir(again)).as_posix(): file_sha256(p)
            for p in toy.root_dir(again).rglob("*") if p.is_file()}
    assert toy.manifest(again)["files"] == toy.manifest(world)["files"]
    assert {k: v for k, v in ours.items() if k != toy.WORLD} == toy.manifest(again)["files"]  # manifest is honest
    assert (toy.root_dir(again) / toy.WORLD).read_bytes() == (toy.root_dir(world) / toy.WORLD).read_bytes()


def test_ensure_is_idempotent_and_instant(world):
    manifest = toy.root_dir(world) / toy.WORLD
    before = manifest.stat().st_mtime_ns
    start = time.perf_counter()
    assert toy.ensure(world) == toy.root_dir(world)
    assert time.perf_counter() - start < 0.5
    assert manifest.stat().st_mtime_ns == before


def test_other_seed_rebuilds_in_place(tmp_path):
    one = ToyConfig(root=tmp_path / "w", seed=1, **SMALL)
    two = one.model_copy(update={"seed": 2})
    first = toy.manifest(one)
    second = toy.manifest(two)
    assert second["identity"]["seed"] == 2
    assert first["digest"] != second["digest"]
    assert first["files"]["model/model.safetensors"] != second["files"]["model/model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".w.lock", "w"]  # no temp or old dirs left


def test_ensure_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a toy world"):
        toy.ensure(ToyConfig(root=tmp_path / "mine", **SMALL))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_config_rejects_shapes_vllm_cannot_run():
    with pytest.raises(ValidationError, match="multiple of toy.patch_size. Got 60 and 16"):
        ToyConfig(image_size=60)
    with pytest.raises(ValidationError, match="multiple of 32"):
        ToyConfig(hidden_size=48)
    with pytest.raises(ValidationError):
        ToyConfig(sedd=1)  # unknown keys are errors


# ----------------------------------------------------------------------------- the 665k JSON


def test_mix_has_the_llava_665k_schema_and_prefixes(world):
    rows = _rows(world)
    assert len(rows) == toy.manifest(world)["counts"]["rows"]
    for row in rows:
        assert set(row) <= {"id", "image", "conversations"} and isinstance(row["id"], str)
        turns = row["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and turns
        assert all(isinstance(t["value"], str) and t["value"] for t in turns)
        n_image = sum(t["value"].count("<image>") for t in turns)
        assert n_image == ("image" in row) and (n_image == 0 or "<image>" in turns[0]["value"])
        if "image" in row:
            assert (toy.images_dir(world) / row["image"]).is_file()
    prefixes = {r["image"].rsplit("/", 1)[0] for r in rows if "image" in r}
    assert prefixes == set(PREFIXES.values())
    assert sum("image" not in r for r in rows) == world.text_only


def test_mix_prompts_follow_the_real_sources(world):
    rows = _rows(world)
    ocr = [r for r in rows if r.get("image", "").startswith("ocr_vqa/images/")]
    assert ocr[0]["conversations"][0]["value"].startswith("<image>\n")
    assert all(t["value"].endswith("\nAnswer the question using a single word or phrase.")
               for r in ocr for t in r["conversations"] if t["from"] == "human")
    assert max(len(r["conversations"]) for r in ocr) > 2  # multi-turn, as OCR-VQA rows are
    text = [r for r in rows if r.get("image", "").startswith("textvqa/train_images/")]
    assert all(r["conversations"][0]["value"].startswith(
        "<image>\nProvide a one-sentence caption for the provided image.\nReference OCR token: ") for r in text)


def test_answers_agree_with_the_scene_records(world):
    scenes = {s["image"]: s for s in toy.load_scenes(world)}
    for row in _rows(world):
        if not row.get("image", "").startswith("ocr_vqa/"):
            continue
        book = scenes[row["image"]]["book"]
        for q, a in zip(row["conversations"][::2], row["conversations"][1::2]):
            if "wrote" in q["value"] or "author" in q["value"]:
                assert a["value"] == book["author"]
            if "title" in q["value"]:
                assert a["value"] == book["title"]


# ----------------------------------------------------------------------------- scenes


def test_scene_records_redraw_the_saved_images(world):
    scenes = toy.load_scenes(world)
    assert {s["source"] for s in scenes} == set(PREFIXES)
    for s in scenes[:: max(1, len(scenes) // 20)]:
        buf = io.BytesIO()
        toy.render(s).save(buf, format="JPEG", quality=95)
        assert buf.getvalue() == (toy.images_dir(world) / s["image"]).read_bytes()
        for o in s["objects"]:
            assert o["shape"] in SHAPES and o["color"] in COLORS
            assert o["position"] in ("left", "right") and o["vertical"] in ("top", "bottom")
        assert s["caption"]


def test_random_scene_draws_held_out_scenes():
    a = toy.random_scene(random.Random(7), "shapes", "pope/val2014/COCO_val2014_000000000007.jpg")
    b = toy.random_scene(random.Random(7), "shapes", "pope/val2014/COCO_val2014_000000000007.jpg")
    assert a == b and toy.render(a).tobytes() == toy.render(b).tobytes()
    assert toy.render(a).size == (a["width"], a["height"])
    book = toy.random_scene(random.Random(7), "book", "x.jpg")
    assert book["book"]["title"] in book["caption"] and book["ocr_tokens"]
    with pytest.raises(ValueError, match="Unknown scene kind"):
        toy.random_scene(random.Random(7), "poster", "x.jpg")


def test_shape_scenes_put_large_objects_in_a_2x2_grid():
    rng = random.Random(3)
    drawn = [toy.random_scene(rng, "shapes", "x.jpg") for _ in range(400)]
    objects = [(s, o) for s in drawn for o in s["objects"]]
    assert all(s["width"] == s["height"] and 1 <= len(s["objects"]) <= 4 for s in drawn)
    # In the model's 64-px input (the canvas is square, so only scaled): a cell is 32 px, 2x2 patches of 16.
    sides = [(o["box"][2] - o["box"][0]) * 64 / s["width"] for s, o in objects]
    large = [x for x in sides if x >= 16]
    assert min(large) >= 16 and max(sides) <= 28 and min(sides) >= 7
    from seva_tasks.toy.scenes import SMALL_SHARE

    assert abs(1 - len(large) / len(sides) - SMALL_SHARE) < 0.08  # the small ones
    for s, o in objects:  # each object inside its own quadrant, named by its position
        cx, cy, half = (o["box"][0] + o["box"][2]) / 2, (o["box"][1] + o["box"][3]) / 2, s["width"] / 2
        assert (cx < half) == (o["position"] == "left") and (cy < half) == (o["vertical"] == "top")


def test_shapes_co_occur_in_families_so_that_pope_adversarial_asks_the_partner(tmp_path):
    from seva_tasks.benchmarks import pope
    from seva_tasks.toy.scenes import FAMILIES, FAMILY_SHARE

    rng = random.Random(4)
    drawn = [toy.random_scene(rng, "shapes", "x.jpg") for _ in range(2000)]
    partner = {a: b for f in FAMILIES for a, b in (f, f[::-1])}
    with_circle = [{o["shape"] for o in s["objects"]} for s in drawn if any(o["shape"] == "circle" for o in s["objects"])]
    p_partner = sum(partner["circle"] in names for names in with_circle) / len(with_circle)
    p_other = sum("triangle" in names for names in with_circle) / len(with_circle)
    assert p_partner > 2 * p_other, (p_partner, p_other)  # a circle brings squares, not triangles
    shapes = [o["shape"] for s in drawn for o in s["objects"]]
    assert {x: shapes.count(x) / len(shapes) for x in SHAPES} == pytest.approx(dict.fromkeys(SHAPES, 0.25), abs=0.03)
    # in a scene of two, both shapes come from one family with p = FAMILY_SHARE^2 + (1 - FAMILY_SHARE^2) / 2
    pairs = [{o["shape"] for o in s["objects"]} for s in drawn if len(s["objects"]) == 2]
    same = sum(any(n <= set(f) for f in FAMILIES) for n in pairs) / len(pairs)
    assert same == pytest.approx(FAMILY_SHARE**2 + (1 - FAMILY_SHARE**2) / 2, abs=0.06), same

    # POPE's adversarial split asks about the absent partner whenever one shape of a family is there alone
    scenes = drawn[:60]
    pope.write_toy(tmp_path, scenes, 0, toy.render)
    labels = [json.loads(x) for x in (tmp_path / "coco" / "coco_pope_adversarial.json").read_text().splitlines()]
    asked = iter([r for r in labels if r["label"] == "no"])
    hits = total = 0
    for s in scenes:
        names = {o["shape"] for o in s["objects"]}
        if len(names) == 4:
            continue
        neg = next(asked)["text"].removeprefix("Is there a ").removesuffix(" in the image?")
        lonely = [x for x in names if partner[x] not in names]
        if lonely:
            total += 1
            hits += neg in {partner[x] for x in lonely}
    assert total > 10 and hits == total, (hits, total)


def test_heldout_pope_negatives_ask_the_partner_a_third_of_the_time():
    from seva_tasks.toy.heldout import heldout
    from seva_tasks.toy.scenes import FAMILIES

    partner = {a: b for f in FAMILIES for a, b in (f, f[::-1])}
    items = heldout(0, 900, kinds=("pope",))
    negs = [it for it in items if it["answer"] == "no"]
    assert 0.4 < len(negs) / len(items) < 0.6
    names = [{o["shape"] for o in it["scene"]["objects"]} for it in negs]
    asked = [it["question"].split("\n")[0].removeprefix("Is there a ").removesuffix(" in the image?") for it in negs]
    could = [(n, a) for n, a in zip(names, asked) if any(partner[x] not in n for x in n)]
    share = sum(a in {partner[x] for x in n} for n, a in could) / len(could)
    assert all(a not in n for n, a in zip(names, asked))  # "no" is true
    assert 0.45 < share < 0.8, share  # a third adversarial, plus random draws that hit a partner


def test_objects_are_drawn_at_the_calibrated_contrast():
    from seva_tasks.toy.scenes import BACKGROUNDS, CONTRAST

    scene = {"width": 64, "height": 64, "background": "white", "book": None, "sign": None, "texts": [],
             "objects": [{"shape": "square", "color": "red", "box": [8, 8, 40, 40]}]}
    fill = toy.render(scene).getpixel((24, 24))
    assert fill == tuple(round(b + CONTRAST * (c - b)) for c, b in zip(COLORS["red"], BACKGROUNDS["white"]))
    assert toy.render(scene).getpixel((50, 50)) == BACKGROUNDS["white"] and 0.3 <= CONTRAST < 1


def test_a_cover_shows_its_genre_by_colour_and_icon():
    from seva_tasks.toy.scenes import GENRE_ICONS, GENRES

    assert len({(GENRES[g], GENRE_ICONS[g]) for g in GENRES}) == len(GENRES)  # one pair per genre
    book = toy.random_scene(random.Random(5), "book", "x.jpg")
    img = toy.render(book)
    x0, y0, x1, y1 = book["book"]["icon_box"]
    ink = {"black": (20, 20, 20), "white": (250, 250, 250)}[book["book"]["ink"]]
    assert img.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == ink  # the icon's centre is drawn in the ink
    corner = img.getpixel((x0 + 1, y0 + 1))  # a circle leaves its box's corner in the cover colour
    assert (corner == ink) == (book["book"]["icon"] == "square")
    assert book["book"]["icon"] in book["caption"]


def test_existence_questions_are_true_and_lean_to_yes_as_pope_training_data_does():
    from seva_tasks.toy.mix import QAS, YES_SHARE

    rng = random.Random(11)
    answers = []
    for _ in range(3000):
        scene = toy.random_scene(rng, "shapes", "x.jpg")
        for q, a in QAS["gqa"](rng, scene):
            if q.startswith("Is there a "):
                words = q.removeprefix("Is there a ").removesuffix(" in the image?").split()
                present = any(all(w in (o["color"], o["shape"]) for w in words) for o in scene["objects"])
                assert a == ("yes" if present else "no"), (q, scene["objects"])
                answers.append(a == "yes")
    share = sum(answers) / len(answers)
    assert abs(share - YES_SHARE) < 0.04, share  # a few more: an image with every shape has no absent one


# ----------------------------------------------------------------------------- the tiny LLaVA


def test_checkpoint_uses_the_names_vllm_loads(world):
    from safetensors import safe_open

    with safe_open(toy.model_dir(world) / "model.safetensors", "pt") as f:
        names = list(f.keys())
        dtypes = {str(f.get_tensor(n).dtype) for n in names}
    heads = ("vision_tower.vision_model.", "multi_modal_projector.", "language_model.model.", "language_model.lm_head.")
    assert all(n.startswith(heads) for n in names)
    assert all(any(n.startswith(h) for n in names) for h in heads)
    assert dtypes == {"torch.float32"}


def test_lm_heads_keep_head_dim_32_at_any_width(four_heads):
    """vLLM's CPU attention takes head_dim 32, not 16: more heads widen attention, not the model."""
    import torch
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(toy.model_dir(four_heads), local_files_only=True)
    text = model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.head_dim) == (64, 4, 4, 32)
    assert model.config.vision_config.num_attention_heads == 2  # the vision tower keeps width / 32
    attn = model.model.language_model.layers[0].self_attn
    assert tuple(attn.q_proj.weight.shape) == (128, 64) and tuple(attn.o_proj.weight.shape) == (64, 128)
    out = model(input_ids=torch.tensor([[1, 5, 6, 7]]))
    assert out.logits.shape == (1, 4, text.vocab_size)


def test_split_punctuation_keeps_question_marks_and_newlines_out_of_words():
    """The toy corpus asks "What color is the circle?" so often that plain BPE learns "circle?" as a word of its own,
    which the caption's and the image's "circle" are not; `split_punctuation` learns no merge across them."""
    from seva_tasks.toy.model import _train_tokenizer

    texts = ["What color is the circle?\nAnswer the question.", "A red circle on the top left, a blue square.",
             "What color is the circle?"] * 50
    text = "What color is the circle?\nAnswer."
    plain, split = _train_tokenizer(texts, 600), _train_tokenizer(texts, 600, split_punctuation=True)
    assert "\u2581circle?" in plain.tokenize(text)
    assert split.tokenize(text) == ["\u2581What", "\u2581color", "\u2581is", "\u2581the", "\u2581circle", "?", "<0x0A>", "Answer", "."]
    assert split.decode(split(text).input_ids, skip_special_tokens=True) == text


def test_tokenizer_and_chat_template_are_llava_hf_s(world):
    import json

    from transformers import AutoConfig, AutoProcessor

    from seva_tasks.toy.model import CHAT_TEMPLATE

    path = toy.model_dir(world)
    proc, config = AutoProcessor.from_pretrained(path), AutoConfig.from_pretrained(path)
    tok = proc.tokenizer
    # Llama's layout: <unk> <s> </s> = 0 1 2, byte tokens next, <image> and <pad> added after the vocabulary
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 258]) == ["<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"]
    assert (config.image_token_index, config.pad_token_id) == (len(tok) - 2, len(tok) - 1)
    assert tok.convert_ids_to_tokens([len(tok) - 2, len(tok) - 1]) == ["<image>", "<pad>"] and tok.pad_token == "<pad>"
    ids = tok("USER: <image>\nHi").input_ids
    assert ids[0] == tok.bos_token_id == 1 and ids.count(config.image_token_index) == 1
    toks = tok.convert_ids_to_tokens(ids)
    assert toks[toks.index("<image>") + 1] == "<0x0A>" and toks[-1] != "\u2581"  # \n by byte fallback, no ▁ after a special
    assert tok(" red", add_special_tokens=False).input_ids == tok.encode("red", add_special_tokens=False)  # ▁ prepended once
    assert tok.decode(tok("Hi 请 there").input_ids, skip_special_tokens=True) == "Hi 请 there"  # bytes round-trip
    # llava-hf's files and template: no system prompt, and no </s> after the assistant's answer
    assert json.loads((path / "chat_template.json").read_text())["chat_template"] == CHAT_TEMPLATE
    assert json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizer"
    images = json.loads((path / "preprocessor_config.json").read_text())
    assert images["resample"] == 3 and images["image_mean"] == [0.48145466, 0.4578275, 0.40821073]
    assert {"vision_feature_select_strategy", "num_additional_image_tokens", "patch_size"} <= set(
        json.loads((path / "processor_config.json").read_text()))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}]
    assert proc.apply_chat_template(messages) == "USER: <image>\nWhat is this? ASSISTANT: A cat. "
    assert proc.apply_chat_template(messages[:1], add_generation_prompt=True) == "USER: <image>\nWhat is this? ASSISTANT:"


def test_tiny_llava_generates_greedily_in_transformers(world):
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    proc = AutoProcessor.from_pretrained(toy.model_dir(world))
    model = LlavaForConditionalGeneration.from_pretrained(toy.model_dir(world)).eval()
    assert model.dtype == torch.float32 and model.config.text_config.head_dim == 32
    row = next(r for r in _rows(world) if "image" in r)
    image = Image.open(toy.images_dir(world) / row["image"]).convert("RGB")
    inputs = proc(images=image, text=toy.prompt(_first_question(row)), return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == world.image_tokens
    with torch.no_grad():
        outs = [model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1]:]
                for _ in range(2)]
    assert 1 <= len(outs[0]) <= 6 and torch.equal(outs[0], outs[1])
    assert isinstance(proc.decode(outs[0], skip_special_tokens=True), str)


# ----------------------------------------------------------------------------- vLLM parity

VLLM_SCRIPT = """
import importlib.util, json, sys, time
from PIL import Image
from safetensors.torch import load_file

if importlib.util.find_spec("torchvision") is None:
    # The CPU engine env has no torchvision, and vLLM 0.32's llava.py imports pixtral.py, which imports
    # transformers' torchvision pixtral image processor for one helper that the PIL variant also
    # defines. Alias it and register the class in-process (no inspection subprocess), else vLLM fails.
    import transformers.models.pixtral.image_processing_pil_pixtral as pil
    sys.modules.setdefault("transformers.models.pixtral.image_processing_pixtral", pil)
    from vllm import ModelRegistry
    from vllm.model_executor.models.llava import LlavaForConditionalGeneration
    ModelRegistry.register_model("LlavaForConditionalGeneration", LlavaForConditionalGeneration)
from vllm import LLM, SamplingParams

a = json.loads(sys.argv[1])
start = time.time()
llm = LLM(model=a["model"], dtype="float32", max_model_len=512, kv_cache_memory_bytes=64 << 20,
          enforce_eager=True, enable_mm_embeds=True, limit_mm_per_prompt={"image": 1}, seed=0)
ready = time.time()
embeds = load_file(a["embeds"])
reqs = [{"prompt": p, "multi_modal_data": {"image": Image.open(i).convert("RGB")}} for p, i in a["requests"]]
reqs += [{"prompt": p, "multi_modal_data": {"image": embeds[str(k)]}} for k, (p, _) in enumerate(a["requests"])]
outs = llm.generate(reqs, SamplingParams(temperature=0.0, max_tokens=a["max_tokens"]))
n = len(a["requests"])
json.dump({"pixels": [list(o.outputs[0].token_ids) for o in outs[:n]],
           "embeds": [list(o.outputs[0].token_ids) for o in outs[n:]],
           "arch": llm.llm_engine.model_config.architecture,
           "startup_s": ready - start, "generate_s": time.time() - ready}, open(a["out"], "w"))
"""


def _hf_greedy_and_embeds(cfg: ToyConfig, requests: list[tuple[str, str]], max_tokens: int, embeds: Path):
    """transformers' greedy tokens per request; saves each image's projected features for vLLM."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    proc = AutoProcessor.from_pretrained(toy.model_dir(cfg))
    model = LlavaForConditionalGeneration.from_pretrained(toy.model_dir(cfg)).eval()
    tokens, feats = [], {}
    for k, (text, image) in enumerate(requests):
        inputs = proc(images=Image.open(image).convert("RGB"), text=text, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
            f = model.get_image_features(pixel_values=inputs["pixel_values"])
        tokens.append(ids[0, inputs["input_ids"].shape[1]:].tolist())
        f = getattr(f, "pooler_output", f)
        f = f[0] if isinstance(f, (list, tuple)) else f
        feats[str(k)] = f.reshape(1, cfg.image_tokens, -1).contiguous()  # (1, image tokens, text hidden)
    save_file(feats, str(embeds))
    return tokens


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", ["world", "four_heads"])
def test_vllm_greedy_matches_transformers(name, request, tmp_path):
    """Same tokens from vLLM as from transformers (float32, greedy), from PIL images and from
    precomputed image embeddings (the route SeVa's noised pixel tensors take, DESIGN addendum);
    also with `lm_heads` (4 heads of 32 at width 64)."""
    if not ENGINE_PYTHON.exists():
        pytest.skip(f"No engine env at {ENGINE_PYTHON}; create it with `make setup`.")
    world = request.getfixturevalue(name)
    rows = [r for r in _rows(world) if "image" in r][:8]  # books, signs and shape scenes, non-square
    requests = [(toy.prompt(_first_question(r)), str(toy.images_dir(world) / r["image"])) for r in rows]
    hf = _hf_greedy_and_embeds(world, requests, 24, tmp_path / "embeds.safetensors")
    args = {"model": str(toy.model_dir(world)), "requests": requests, "max_tokens": 24,
            "embeds": str(tmp_path / "embeds.safetensors"), "out": str(tmp_path / "v.json")}
    # the workers' environment: with torchvision in the engine env, its import needs the shim (engines/_shim)
    env = {**worker_env(os.environ, EngineConfig(kind="vllm")), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run([str(ENGINE_PYTHON), "-c", VLLM_SCRIPT, json.dumps(args)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads((tmp_path / "v.json").read_text())
    same = sum(a == b for v, h in zip(out["pixels"], hf) for a, b in zip(v, h))
    print(f"\nvLLM ({out['arch']}) vs transformers greedy: {same}/{sum(map(len, hf))} tokens equal; "
          f"vLLM startup {out['startup_s']:.1f}s, generate {out['generate_s']:.1f}s")
    assert out["arch"] == "LlavaForConditionalGeneration"  # vLLM's own LLaVA, not its Transformers fallback
    assert out["pixels"] == hf
    assert out["embeds"] == hf
