"""The embedded toy world: drawn scenes, a LLaVA-665k-style JSON and a tiny LLaVA, all from one seed.

    .venv/bin/python -m seva_tasks.toy [key=value ...]   # e.g. seed=3; instant when already built

Nothing is downloaded. The toy preset points every path of the pipeline into `<root>/` (default
`data/toy/`, git-ignored):

    world.json                  manifest, written last: config, counts, sha256 of every file, digest
    scenes.jsonl                ground truth of every image, one `random_scene` record per line
    llava_v1_5_mix665k.json     LLaVA-1.5's instruction mix: real schema, prefixes and prompts
    images/<prefix>/<file>      e.g. images/ocr_vqa/images/1509342865.jpg (prefix as in the JSON)
    model/                      tiny LlavaForConditionalGeneration + LlavaProcessor, float32
                                safetensors that transformers and vLLM both load

Benchmarks draw held-out scenes with `random_scene(rng, kind, image)` and `render(scene)`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import random
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from pydantic import Field, model_validator

from seva_tasks.base import StageConfig, resolve
from seva_tasks.errors import ConfigError


MIX = "llava_v1_5_mix665k.json"
SCENES = "scenes.jsonl"
WORLD = "world.json"

SYSTEM = (  # LLaVA's vicuna_v1 system prompt (the evaluation template)
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
SHORT = "Answer the question using a single word or phrase."
CAPTION = "Provide a one-sentence caption for the provided image."

# The 665k JSON's image prefixes, per source, and the kind of scene each one shows.
PREFIXES = {
    "ocr_vqa": "ocr_vqa/images",
    "textvqa": "textvqa/train_images",
    "coco": "coco/train2017",
    "gqa": "gqa/images",
    "vg": "vg/VG_100K",
}
KINDS = {"ocr_vqa": "book", "textvqa": "sign", "coco": "shapes", "gqa": "shapes", "vg": "shapes"}

COLORS = {
    "red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220),
    "yellow": (240, 210, 40), "purple": (140, 60, 170), "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
BACKGROUNDS = {"white": (250, 250, 250), "gray": (190, 190, 195), "beige": (235, 225, 200)}
INKS = {"black": (20, 20, 20), "white": (250, 250, 250)}
PALETTE = {**COLORS, **BACKGROUNDS, **INKS}

# OCR-VQA's genre names (Amazon categories); the cover colour hints at the genre.
GENRES = {
    "Travel": "blue", "Cookbooks, Food & Wine": "orange", "History": "purple", "Romance": "red",
    "Science & Math": "green", "Children's Books": "yellow", "Self-Help": "orange",
    "Mystery, Thriller & Suspense": "purple", "Sports & Outdoors": "green", "Humor & Entertainment": "yellow",
}
TITLE_WORDS = (
    ("The", "Silent", "Golden", "Little", "Hidden", "Last", "Quiet", "Lost", "Bright", "Wild"),
    ("River", "Garden", "Kitchen", "Mountain", "Secret", "Journey", "Island", "Letter", "Forest", "City"),
)
FIRST_NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas", "Lena", "Omar")
LAST_NAMES = ("Adams", "Brown", "Costa", "Dubois", "Evans", "Fischer", "Garcia", "Hill", "Ito", "Jensen", "Novak")
SIGN_NAMES = ("ROSA", "BLUE", "SUNNY", "CITY", "OAK", "STAR", "NORTH", "LUCKY")
SIGN_PLACES = ("CAFE", "BAKERY", "HOTEL", "PHARMACY", "MARKET", "DINER", "BOOKS", "PARKING")
SIGN_WORDS = ("OPEN", "STOP", "EXIT", "SALE", "BUS STOP", "NO ENTRY", "MAIN ST", "ONE WAY")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SIDES = {"circle": "no corners", "square": "four sides", "triangle": "three sides", "diamond": "four sides"}

# Benchmark prompt phrases, so the tokenizer learns them as few tokens (toy benchmarks reuse them).
PHRASES = (
    SHORT, "Answer with the option's letter from the given choices directly.", "Please answer yes or no.",
    "When the provided information is insufficient, respond with 'Unanswerable'.",
    "Reference OCR token:", "Context:", "Is there a", "in the image?", "A. B. C. D. Yes No yes no",
)


class ToyConfig(StageConfig):
    """The embedded toy world and tiny model; every byte of `<root>/` follows from these fields.

    Args:
        seed: seeds scenes, conversations, and model weights.
        root: where the world is built.
        books, signs, scenes, text_only: how many of each the 665k JSON holds.
        image_size, patch_size, hidden_size, layers, vocab_size, init_std: the tiny LLaVA.
    """

    seed: int = Field(0, description="Seeds every random choice: scenes, conversations, weights.")
    root: Path = Field(Path("data/toy"), description="Where the world is built (relative: to the project root).")
    books: int = Field(48, ge=1, description="Book covers under ocr_vqa/images/, one OCR-VQA conversation each.")
    signs: int = Field(48, ge=1, description="Signs under textvqa/train_images/, one TextCaps caption prompt each.")
    scenes: int = Field(24, ge=1, description="Shape scenes for each of coco/train2017, gqa/images, vg/VG_100K.")
    text_only: int = Field(16, ge=0, description="Text-only conversations (rows without `image`, like ShareGPT).")
    image_size: int = Field(64, ge=8, description="Vision input side in px; the processor resizes and crops to it.")
    patch_size: int = Field(16, ge=1, description="Vision patch side; image tokens = (image_size / patch_size)^2.")
    hidden_size: int = Field(64, ge=32, description="Width of both towers; a multiple of 32 (heads of dim 32).")
    layers: int = Field(2, ge=2, description="Layers in each tower (LLaVA reads the penultimate CLIP layer).")
    vocab_size: int = Field(1024, ge=300, description="Upper bound of the BPE vocabulary trained on the toy corpus.")
    init_std: float = Field(0.02, gt=0, description="Std of the random weights (transformers' initializer_range).")

    @model_validator(mode="after")
    def _check_shapes(self) -> ToyConfig:
        errors = []
        if self.image_size % self.patch_size:
            errors.append(f"toy.image_size must be a multiple of toy.patch_size. Got {self.image_size} and "
                          f"{self.patch_size}; e.g. image_size=64 patch_size=16.")
        if self.hidden_size % 32:
            errors.append(f"toy.hidden_size must be a multiple of 32 (attention head_dim 32, which vLLM's CPU "
                          f"backend supports). Got {self.hidden_size}; e.g. hidden_size=64.")
        if errors:
            raise ValueError(" ".join(errors))
        return self

    @property
    def image_tokens(self) -> int:
        """How many `<image>` tokens one image expands to (CLS dropped: strategy 'default')."""
        return (self.image_size // self.patch_size) ** 2


# --------------------------------------------------------------------------------------------
# Scenes: records (the ground truth) and rendering


def random_scene(rng: random.Random, kind: str, image: str) -> dict:
    """A new scene record of `kind` ('shapes', 'book' or 'sign') whose image will live at `image`.

    Record: image, kind, width, height, background; objects [{shape, color, box, position
    (left|right), vertical (top|bottom)}]; texts [{role, text, box, size, ink}]; book {title,
    author, genre} or None; sign {text, color, box} or None; ocr_tokens; caption. Boxes are
    [x0, y0, x1, y1] in pixels; colours are keys of PALETTE.
    """
    make = {"shapes": _shapes_scene, "book": _book_scene, "sign": _sign_scene}
    if kind not in make:
        raise ValueError(f"Unknown scene kind {kind!r}; use one of {', '.join(make)}.")
    scene = {"image": image, "kind": kind, "objects": [], "texts": [], "book": None, "sign": None,
             "ocr_tokens": [], **make[kind](rng)}
    scene["caption"] = caption(scene)
    return scene


def _shapes_scene(rng: random.Random) -> dict:
    """1-5 shapes, each alone in a grid cell, so left/right and top/bottom are never ambiguous."""
    w, h = rng.choice([(96, 72), (72, 96), (96, 96), (120, 80)])
    cols, rows = (4, 2) if w >= h else (2, 4)
    cells = sorted(rng.sample(range(cols * rows), rng.randint(1, 5)))
    objects = [_place(rng, c % cols, c // cols, cols, rows, w, h) for c in cells]
    return {"width": w, "height": h, "background": rng.choice(list(BACKGROUNDS)), "objects": objects}


def _place(rng: random.Random, col: int, row: int, cols: int, rows: int, w: int, h: int) -> dict:
    """A random shape inside one grid cell."""
    cw, ch = w / cols, h / rows
    side = int(min(cw, ch) * rng.uniform(0.55, 0.85))
    x0 = int(cw * col + rng.uniform(0, cw - side))
    y0 = int(ch * row + rng.uniform(0, ch - side))
    return {"shape": rng.choice(SHAPES), "color": rng.choice(list(COLORS)), "box": [x0, y0, x0 + side, y0 + side],
            "position": "left" if col < cols / 2 else "right", "vertical": "top" if row < rows / 2 else "bottom"}


def _book_scene(rng: random.Random) -> dict:
    """A book cover: title on top, author below; the cover colour follows the genre."""
    w, h = 80, 120
    genre = rng.choice(list(GENRES))
    title = " ".join(rng.choice(words) for words in TITLE_WORDS)
    author = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    ink = "black" if GENRES[genre] in ("yellow", "orange") else "white"
    texts = [{"role": "title", "text": _wrap(title, 10), "box": [2, 6, w - 2, 62], "size": 11, "ink": ink},
             {"role": "author", "text": _wrap(author, 12), "box": [2, 88, w - 2, 116], "size": 9, "ink": ink}]
    return {"width": w, "height": h, "background": GENRES[genre], "texts": texts,
            "book": {"title": title, "author": author, "genre": genre}, "ocr_tokens": (title + " " + author).split()}


def _sign_scene(rng: random.Random) -> dict:
    """A coloured board on a pole with one or two words on it, sometimes a shape beside it."""
    w, h = 128, 72
    text = rng.choice([f"{rng.choice(SIGN_NAMES)} {rng.choice(SIGN_PLACES)}", rng.choice(SIGN_WORDS)])
    color = rng.choice(list(COLORS))
    ink = "black" if color in ("yellow", "orange") else "white"
    board = [8, 6, 88, 44]
    scene = {"width": w, "height": h, "background": rng.choice(list(BACKGROUNDS)),
             "texts": [{"role": "sign", "text": _wrap(text, 9), "box": board, "size": 12, "ink": ink}],
             "sign": {"text": text, "color": color, "box": board}, "ocr_tokens": text.split()}
    if rng.random() < 0.5:  # a shape on the right half gives signs a VQA question too
        scene["objects"] = [_place(rng, 3, rng.randrange(2), 4, 2, w, h)]
    return scene


def _wrap(text: str, width: int) -> str:
    """Greedy word wrap to lines of at most `width` characters (longer words stay whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "\n".join(lines)


def caption(scene: dict) -> str:
    """A one-sentence description of a scene (TextCaps/COCO-style caption, LLaVA-Bench context)."""
    if scene["book"]:
        b = scene["book"]
        return f'The {scene["background"]} cover of the book "{b["title"]}" by {b["author"]}.'
    things = [f"{_a(o['color'])} {o['shape']} on the {o['vertical']} {o['position']}" for o in scene["objects"]]
    listing = ", ".join(things[:-1]) + (" and " if len(things) > 1 else "") + (things[-1] if things else "")
    if scene["sign"]:
        s = scene["sign"]
        beside = f" next to {listing}." if things else "."
        return f'{_a(s["color"]).capitalize()} sign that says "{s["text"]}"{beside}'
    return f"A {scene['background']} picture with {listing}."


def _a(word: str) -> str:
    """The word with its indefinite article ("an orange", "a red")."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def render(scene: dict) -> Image.Image:
    """Draw a scene record as an RGB image (deterministic: same record, same pixels)."""
    img = Image.new("RGB", (scene["width"], scene["height"]), PALETTE[scene["background"]])
    draw = ImageDraw.Draw(img)
    if scene["sign"]:
        x0, y0, x1, y1 = scene["sign"]["box"]
        mid = (x0 + x1) // 2
        draw.rectangle([mid - 2, y1, mid + 2, scene["height"]], fill=(110, 90, 70))  # the pole
        draw.rectangle(scene["sign"]["box"], fill=COLORS[scene["sign"]["color"]], outline=INKS["black"])
    for obj in scene["objects"]:
        _draw_shape(draw, obj["shape"], obj["box"], COLORS[obj["color"]])
    for t in scene["texts"]:
        x0, y0, x1, y1 = t["box"]
        draw.multiline_text(((x0 + x1) / 2, (y0 + y1) / 2), t["text"], font=_font(t["size"]),
                            fill=PALETTE[t["ink"]], anchor="mm", align="center", spacing=2)
    return img


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: list[int], fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(mx, y0), (x1, y1), (x0, y1)], fill=fill)
    else:  # diamond
        draw.polygon([(mx, y0), (x1, my), (mx, y1), (x0, my)], fill=fill)


@functools.lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font (needs no system fonts, so pixels are the same everywhere)."""
    return ImageFont.load_default(size=size)


# --------------------------------------------------------------------------------------------
# The LLaVA-665k JSON


def _turns(qas: list[tuple[str, str]], *, suffix: str = "", image_last: bool = False) -> list[dict]:
    """Conversation turns; `<image>` goes in the first human turn, before (usually) or after it."""
    out = []
    for i, (q, a) in enumerate(qas):
        text = q + (f"\n{suffix}" if suffix else "")
        if i == 0:
            text = f"{text}\n<image>" if image_last else f"<image>\n{text}"
        out += [{"from": "human", "value": text}, {"from": "gpt", "value": a}]
    return out


def _ocr_vqa_qas(rng: random.Random, scene: dict) -> list[tuple[str, str]]:
    """OCR-VQA's templated questions about a cover: author, title, genre, and yes/no on genres."""
    b = scene["book"]
    other = rng.choice([g for g in GENRES if g != b["genre"]])
    qas = [(rng.choice(["Who wrote this book?", "Who is the author of this book?"]), b["author"]),
           ("What is the title of this book?", b["title"]),
           (rng.choice(["What type of book is this?", "What is the genre of this book?"]), b["genre"]),
           (f"Is this book related to {b['genre']}?", "Yes"),
           (f"Is this book related to {other}?", "No")]
    rng.shuffle(qas)
    return qas[: rng.randint(3, 5)]


def _textvqa_qas(rng: random.Random, scene: dict) -> list[tuple[str, str]]:
    """The 665k mix's textvqa rows are TextCaps caption prompts with the reference OCR tokens."""
    return [(f"{CAPTION}\nReference OCR token: {', '.join(scene['ocr_tokens'])}", scene["caption"])]


def _unique(scene: dict, **match: str) -> dict | None:
    """The only object with these attributes, or None when there are none or several."""
    hits = [o for o in scene["objects"] if all(o[k] == v for k, v in match.items())]
    return hits[0] if len(hits) == 1 else None


def _count(scene: dict, **match: str) -> int:
    return sum(all(o[k] == v for k, v in match.items()) for o in scene["objects"])


def _coco_qas(rng: random.Random, scene: dict) -> list[tuple[str, str]]:
    """LLaVA-Instruct-style conversation: full-sentence answers about what, how many, where; or, for
    a third of the images, an A-OKVQA-style multiple-choice question (the 665k mix has both on COCO)."""
    if rng.random() < 1 / 3:
        return _aokvqa_qas(rng, scene)
    o = rng.choice(scene["objects"])
    n = _count(scene, color=o["color"])
    qas = [("What can you see in this image?", scene["caption"]),
           (f"How many {o['color']} objects are there?",
            f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {o['color']} object{'s' * (n != 1)} in the image.")]
    if _unique(scene, color=o["color"], shape=o["shape"]):
        qas.append((f"Where is the {o['color']} {o['shape']}?",
                    f"The {o['color']} {o['shape']} is at the {o['vertical']} {o['position']} of the image."))
    rng.shuffle(qas)
    return qas


def _aokvqa_qas(rng: random.Random, scene: dict) -> list[tuple[str, str]]:
    """One multiple-choice question with lettered options, answered by the letter (A-OKVQA in the mix)."""
    o = rng.choice(scene["objects"])
    n = _count(scene, shape=o["shape"])
    if _unique(scene, shape=o["shape"]) and rng.random() < 0.5:
        q, gold, pool = f"What color is the {o['shape']}?", o["color"], list(COLORS)
    elif _unique(scene, color=o["color"]) and rng.random() < 0.5:
        q, gold, pool = f"What shape is the {o['color']} object?", o["shape"], list(SHAPES)
    else:
        q, gold, pool = f"How many {o['shape']}s are in the image?", str(n), [str(k) for k in range(1, 7)]
    options = [gold, *rng.sample([x for x in pool if x != gold], 3)]
    rng.shuffle(options)
    listing = "\n".join(f"{'ABCD'[i]}. {x}" for i, x in enumerate(options))
    return [(f"{q}\n{listing}\nAnswer with the option's letter from the given choices directly.", "ABCD"[options.index(gold)])]


def _gqa_qas(rng: random.Random, scene: dict) -> list[tuple[str, str]]:
    """GQA-style short answers (lowercase) about colours, shapes, sides, counts and existence.

    Existence questions are balanced, as GQA's balanced split and POPE are: half name a thing that
    is in the image, half one drawn at random (mostly absent, so the model can learn to say no).
    """
    o = rng.choice(scene["objects"])
    color, shape = (o["color"], o["shape"]) if rng.random() < 0.5 else (rng.choice(list(COLORS)), rng.choice(SHAPES))
    thing = o["shape"] if rng.random() < 0.5 else rng.choice(SHAPES)
    qas = [(f"Is there a {color} {shape} in the image?", "yes" if _count(scene, color=color, shape=shape) else "no"),
           (f"Is there a {thing} in the image?", "yes" if _count(scene, shape=thing) else "no"),
           (f"How many {o['shape']}s are there?", str(_count(scene, shape=o["shape"])))]
    if _unique(scene, shape=o["shape"]):
        qas.append((f"What color is the {o['shape']}?", o["color"]))
        qas.append((f"On which side is the {o['shape']}?", o["position"]))
    if _unique(scene, color=o["color"]):
        qas.append((f"What shape is the {o['color']} object?", o["shape"]))
    rng.shuffle(qas)
    return qas[:4]


def _vg_qas(rng: random.Random, scene: dict) -> list[tuple[str, str]]:
    """Visual Genome region prompts as in the 665k mix: box -> description and description -> box."""
    qas = []
    for o in rng.sample(scene["objects"], min(2, len(scene["objects"]))):
        box, what = _norm_box(scene, o["box"]), f"{o['color']} {o['shape']}"
        if rng.random() < 0.5:
            qas.append((f"Please provide a short description for this region: {box}", f"{_a(what).capitalize()}."))
        else:
            qas.append((f"Please provide the bounding box coordinate of the region this sentence describes: "
                        f"{_a(what)}.", box))
    return qas


def _norm_box(scene: dict, box: list[int]) -> str:
    """A box as LLaVA-1.5 writes it: relative to the image padded to a square, 2 decimals."""
    side = max(scene["width"], scene["height"])
    dx, dy = (side - scene["width"]) / 2, (side - scene["height"]) / 2
    x0, y0, x1, y1 = box
    rel = ((x0 + dx) / side, (y0 + dy) / side, (x1 + dx) / side, (y1 + dy) / side)
    return "[" + ", ".join(f"{v:.2f}" for v in rel) + "]"


def _text_only_qas(rng: random.Random) -> list[tuple[str, str]]:
    """ShareGPT stand-ins: small facts and arithmetic, 1-3 turns."""
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    shape, colors = rng.choice(SHAPES), sorted(rng.sample(list(COLORS), 3))
    word = rng.choice(TITLE_WORDS[1])
    pool = [(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."),
            (f"How many sides does a {shape} have?", f"A {shape} has {SIDES[shape]}."),
            (f"Sort these colors alphabetically: {', '.join(rng.sample(colors, 3))}.", ", ".join(colors) + "."),
            (f"Write the word {word} backwards.", word[::-1] + ".")]
    return rng.sample(pool, rng.randint(1, 3))


QAS = {"ocr_vqa": _ocr_vqa_qas, "textvqa": _textvqa_qas, "coco": _coco_qas, "gqa": _gqa_qas, "vg": _vg_qas}


def _file_stem(rng: random.Random, source: str) -> str:
    """A file name in the style of the real dataset (ASIN, TextVQA hex id, COCO zero-padded id, ...)."""
    if source == "ocr_vqa":
        return str(rng.randrange(10**9, 10**10))
    if source == "textvqa":
        return f"{rng.getrandbits(64):016x}"
    if source == "coco":
        return f"{rng.randrange(1, 600_000):012d}"
    if source == "gqa":
        return str(rng.randrange(2_300_000, 2_420_000))
    return str(rng.randrange(1, 150_000))  # vg: below GQA's range, so ids never collide


def _make_scenes(cfg: ToyConfig) -> list[dict]:
    """Every training image's record, with its 665k `id`, `source` and image path."""
    counts = {"ocr_vqa": cfg.books, "textvqa": cfg.signs, "coco": cfg.scenes, "gqa": cfg.scenes, "vg": cfg.scenes}
    scenes = []
    for source, n in counts.items():
        rng = random.Random(f"{cfg.seed}:{source}")  # per source: more books do not reshuffle the signs
        stems: set[str] = set()
        while len(stems) < n:
            stem = _file_stem(rng, source)
            if stem in stems:
                continue
            stems.add(stem)
            scene = random_scene(rng, KINDS[source], f"{PREFIXES[source]}/{stem}.jpg")
            scenes.append({"id": stem, "source": source, **scene})
    return scenes


def _mix_rows(cfg: ToyConfig, scenes: list[dict]) -> list[dict]:
    """The 665k rows: one conversation per image, plus text-only rows, shuffled as the real file is."""
    rng = random.Random(f"{cfg.seed}:mix")
    rows = []
    for s in scenes:
        qas = QAS[s["source"]](rng, s)
        suffix = SHORT if s["source"] in ("ocr_vqa", "gqa") else ""
        image_last = s["source"] == "coco" and rng.random() < 0.3  # LLaVA-Instruct puts it either side
        turns = _turns(qas, suffix=suffix, image_last=image_last)
        rows.append({"id": s["id"], "image": s["image"], "conversations": turns})
    for i in range(cfg.text_only):
        rid = "".join(rng.choice("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(7))
        rows.append({"id": f"{rid}_{i % 3}", "conversations": _turns_text(_text_only_qas(rng))})
    rng.shuffle(rows)
    return rows


def _turns_text(qas: list[tuple[str, str]]) -> list[dict]:
    return [t for q, a in qas for t in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]


# --------------------------------------------------------------------------------------------
# The tiny LLaVA: CLIP vision tower + Llama text model, own BPE tokenizer, vicuna chat template

SPECIAL = ("<unk>", "<s>", "</s>", "<pad>", "<image>")  # ids 0-4, in this order

# Vicuna v1 as LLaVA-1.5 evaluates it; message content may be a string or HF's typed parts.
# No BOS here: the tokenizer adds it when the rendered prompt is encoded (as llava-hf does).
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='" + SYSTEM.replace("'", "\\'") + "') -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.system = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
    "{%- endif -%}"
    "{{- ns.system + ' ' -}}"
    "{%- for m in messages if m['role'] != 'system' -%}"
    "{{- 'USER: ' if m['role'] == 'user' else 'ASSISTANT: ' -}}"
    "{%- if m['content'] is string -%}{{- m['content'] -}}{%- else -%}"
    "{%- for p in m['content'] if p['type'] == 'image' -%}{{- '<image>\n' -}}{%- endfor -%}"
    "{%- for p in m['content'] if p['type'] == 'text' -%}{{- p['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{{- ' ' if m['role'] == 'user' else '</s>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


def prompt(question: str, *, image: bool = True) -> str:
    """The single-turn vicuna_v1 prompt string LLaVA-1.5 uses: system, USER: <image>\\n{q} ASSISTANT:"""
    placeholder = "<image>\n" if image else ""
    return f"{SYSTEM} USER: {placeholder}{question} ASSISTANT:"


def _corpus(rows: list[dict], scenes: list[dict]) -> list[str]:
    """Every text the toy world contains, in a fixed order (the tokenizer's training data)."""
    texts = [SYSTEM, "USER: ASSISTANT:", *PHRASES]
    texts += [t["value"] for r in rows for t in r["conversations"]]
    texts += [s["caption"] for s in scenes]
    return texts


def _train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with LLaMA's special tokens (<unk> <s> </s>), <pad> and <image>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Printable ASCII and newline only: a random model then samples readable text (never half a
    # UTF-8 character), and other characters encode as <unk> instead of vanishing.
    ascii_ = "".join(map(chr, range(32, 127))) + "\n"
    alphabet = [c for piece, _ in pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
                .pre_tokenize_str(ascii_) for c in piece]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL), show_progress=False,
                                  initial_alphabet=alphabet, limit_alphabet=len(alphabet))
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=2048, padding_side="left")


def _llava_config(cfg: ToyConfig, vocab: int):
    """LLaVA-1.5's wiring (penultimate CLIP layer, CLS dropped, 2-layer GELU projector) at toy size."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    heads = cfg.hidden_size // 32
    vision = CLIPVisionConfig(hidden_size=cfg.hidden_size, intermediate_size=4 * cfg.hidden_size,
                              num_hidden_layers=cfg.layers, num_attention_heads=heads, image_size=cfg.image_size,
                              patch_size=cfg.patch_size, projection_dim=cfg.hidden_size,
                              initializer_range=cfg.init_std)
    text = LlamaConfig(hidden_size=cfg.hidden_size, intermediate_size=4 * cfg.hidden_size,
                       num_hidden_layers=cfg.layers, num_attention_heads=heads, num_key_value_heads=heads,
                       vocab_size=vocab, max_position_embeddings=2048, rms_norm_eps=1e-5,
                       initializer_range=cfg.init_std, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                       tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=SPECIAL.index("<image>"),
                       vision_feature_layer=-2, vision_feature_select_strategy="default",
                       image_seq_length=cfg.image_tokens, projector_hidden_act="gelu", tie_word_embeddings=False)


def _processor(cfg: ToyConfig, tokenizer):
    """CLIP preprocessing at toy size; patch/CLS settings make `<image>` expand to image_tokens."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    images = CLIPImageProcessor(size={"shortest_edge": cfg.image_size},
                                crop_size={"height": cfg.image_size, "width": cfg.image_size})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=cfg.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE, image_token="<image>")


def _save_model(cfg: ToyConfig, texts: list[str], out: Path) -> None:
    """Train the tokenizer, draw seeded float32 weights, and save everything under `out`."""
    import torch
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlavaForConditionalGeneration

    from seva_tasks.llava.weights import checkpoint_names

    tokenizer = _train_tokenizer(texts, cfg.vocab_size)
    tokenizer.chat_template = CHAT_TEMPLATE
    config = _llava_config(cfg, len(tokenizer))
    with torch.random.fork_rng():  # seed the weights without disturbing the caller's RNG
        torch.manual_seed(cfg.seed)
        model = LlavaForConditionalGeneration(config).float().eval()
    out.mkdir(parents=True)
    config.architectures = ["LlavaForConditionalGeneration"]  # vLLM picks its model class by this name
    config.save_pretrained(out)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=3, do_sample=False).save_pretrained(out)
    save_file(checkpoint_names(model.state_dict()), str(out / "model.safetensors"), metadata={"format": "pt"})
    _processor(cfg, tokenizer).save_pretrained(out)


# --------------------------------------------------------------------------------------------
# Building and finding the world


def root_dir(cfg: ToyConfig) -> Path:
    """`cfg.root` as an absolute path."""
    return resolve(cfg.root)


def model_dir(cfg: ToyConfig) -> Path:
    """The tiny LLaVA (`from_pretrained` / `vllm.LLM(model=...)` directory)."""
    return root_dir(cfg) / "model"


def mix_path(cfg: ToyConfig) -> Path:
    """The toy `llava_v1_5_mix665k.json`; image paths in it are relative to `images_dir`."""
    return root_dir(cfg) / MIX


def images_dir(cfg: ToyConfig) -> Path:
    """The image root: the 665k JSON's `image` paths and scene records' `image` are relative to it."""
    return root_dir(cfg) / "images"


def scenes_path(cfg: ToyConfig) -> Path:
    """`scenes.jsonl`: one `random_scene` record per image, plus its 665k `id` and `source`."""
    return root_dir(cfg) / SCENES


def load_scenes(cfg: ToyConfig) -> list[dict]:
    """Every training image's scene record (built first if needed)."""
    ensure(cfg)
    return [json.loads(line) for line in scenes_path(cfg).read_text().splitlines()]


def world(cfg: ToyConfig) -> dict:
    """The manifest (config, counts, per-file sha256, digest), building the world first if needed.

    Stages that read toy files can use `world(cfg)["digest"]` as their external fingerprint.
    """
    ensure(cfg)
    return json.loads((root_dir(cfg) / WORLD).read_text())


def _source_hash() -> str:
    """sha256 of this file and the benchmark writers, as they were when this module was imported."""
    sources = [Path(__file__), *sorted((Path(__file__).parent / "benchmarks").glob("*.py"))]  # write_toy too
    return hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]


# Read once, at import: a process that imported an older toy.py must not stamp the world it builds
# with the newer source on disk (it would then pass for current while holding the old generator's bytes).
_CODE = _source_hash()


def _identity(cfg: ToyConfig) -> dict:
    """What decides the bytes: every field except where they are written, and this code's source.

    Hashing the source (not a hand-bumped version) means an edited generator never leaves a stale
    world behind; a rebuild takes seconds, and unchanged bytes keep downstream stages cached.
    """
    return {"code": _CODE, **cfg.model_dump(mode="json", exclude={"root"})}


def _is_current(root: Path, cfg: ToyConfig) -> bool:
    try:
        return json.loads((root / WORLD).read_text())["identity"] == _identity(cfg)
    except (OSError, ValueError, KeyError):
        return False


def ensure(cfg: ToyConfig | None = None) -> Path:
    """Build the world into `cfg.root` unless it is already there for this config; return the root.

    Builds in a temp dir beside the root and renames it into place (world.json is written last),
    under a lock so that concurrent callers build once. A root built from another config is replaced.
    """
    cfg = cfg or ToyConfig()
    root = root_dir(cfg)
    if _is_current(root, cfg):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _locked(root.parent / f".{root.name}.lock"):
        if _is_current(root, cfg):
            return root
        if root.exists() and not (root / WORLD).is_file() and any(root.iterdir()):
            raise ConfigError(f"toy.root {root} exists but is not a toy world (no {WORLD}), so it will not be "
                              f"replaced. Point toy.root at a new or empty directory, e.g. toy.root=data/toy.")
        for part in ("tmp", "old"):  # left behind by a killed build
            for stale in root.parent.glob(f".{root.name}.{part}-*"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
        try:
            _build(cfg, tmp)
            _swap_in(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _swap_in(tmp: Path, root: Path) -> None:
    """Replace `root` by `tmp` (each step a rename, so readers never see a half-built world)."""
    old = root.parent / f".{root.name}.old-{os.getpid()}"
    if root.exists():
        os.rename(root, old)
    os.rename(tmp, root)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(cfg: ToyConfig, out: Path) -> None:
    """Write scenes, images, the 665k JSON and the model into `out`, then world.json."""
    scenes = _make_scenes(cfg)
    for s in scenes:
        path = out / "images" / s["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        render(s).save(path, format="JPEG", quality=95)
    with open(out / SCENES, "w") as f:
        f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in scenes)
    rows = _mix_rows(cfg, scenes)
    (out / MIX).write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    _save_model(cfg, _corpus(rows, scenes), out / "model")
    from seva_tasks.benchmarks import write_toy_world  # held-out scenes, every benchmark's real layout

    write_toy_world(out / "eval", cfg.seed)
    _write_world(cfg, out, rows, scenes)


def _write_world(cfg: ToyConfig, out: Path, rows: list[dict], scenes: list[dict]) -> None:
    files = {p.relative_to(out).as_posix(): _sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    sources = {src: sum(s["source"] == src for s in scenes) for src in PREFIXES}
    manifest = {
        "identity": _identity(cfg),
        "paths": {"mix": MIX, "images": "images", "scenes": SCENES, "model": "model", "eval": "eval"},
        "counts": {"rows": len(rows), "text_only_rows": sum("image" not in r for r in rows), "images": sources},
        "image_tokens": cfg.image_tokens,
        "digest": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
        "files": files,
    }
    (out / WORLD).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str]) -> None:
    """`python -m seva_tasks.toy [key=value ...]`: build (or find) the world and say where it is."""
    overrides = dict(a.split("=", 1) for a in argv)
    cfg = ToyConfig.model_validate(overrides)
    root = ensure(cfg)
    w = json.loads((root / WORLD).read_text())
    print(f"Toy world ({w['counts']['rows']} rows, {sum(w['counts']['images'].values())} images, "
          f"{len(w['files'])} files, digest {w['digest'][:12]}) → {root}")


if __name__ == "__main__":
    main(sys.argv[1:])
