"""The toy `llava_v1_5_mix665k.json`: one conversation per training scene in the real sources' styles.

Each of the mix's sources (OCR-VQA, TextCaps, LLaVA-Instruct/A-OKVQA on COCO, GQA, Visual Genome,
ShareGPT-like text) gets its question templates, its image path prefix and its file-name style, so
the rows look like LLaVA-1.5's: `{id, image?, conversations: [{from: human|gpt, value}]}`. Answers
are read off the scene records, so every `gpt` turn is true.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from seva_tasks.llava.prompts import OPTION_LETTER, SHORT_ANSWER
from seva_tasks.toy.scenes import COLORS, GENRES, SHAPES, TITLE_WORDS, article, random_scene

if TYPE_CHECKING:
    from seva_tasks.toy.world import ToyConfig

# The 665k JSON's image prefixes, per source, and the kind of scene each one shows.
PREFIXES = {
    "ocr_vqa": "ocr_vqa/images",
    "textvqa": "textvqa/train_images",
    "coco": "coco/train2017",
    "gqa": "gqa/images",
    "vg": "vg/VG_100K",
}
KINDS = {"ocr_vqa": "book", "textvqa": "sign", "coco": "shapes", "gqa": "shapes", "vg": "shapes"}
CAPTION = "Provide a one-sentence caption for the provided image."  # TextCaps' prompt in the mix
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
YES_SHARE = 0.62  # existence questions about a present thing (real yes-rates of POPE-like training data: ~60-65 %)
SIDES = {"circle": "no corners", "square": "four sides", "triangle": "three sides", "diamond": "four sides"}


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


def unique(scene: dict, **match: str) -> dict | None:
    """The only object with these attributes, or None when there are none or several."""
    hits = [o for o in scene["objects"] if all(o[k] == v for k, v in match.items())]
    return hits[0] if len(hits) == 1 else None


def _count(scene: dict, **match: str) -> int:
    return sum(all(o[k] == v for k, v in match.items()) for o in scene["objects"])


def _coco_qas(rng: random.Random, scene: dict) -> list[tuple[str, str]]:
    """LLaVA-Instruct-style conversation: full-sentence answers about what, how many, where; or, for
    a third of the images, an A-OKVQA-style multiple-choice question (the 665k mix has both on COCO)."""
    if rng.random() < 1 / 3:
        return aokvqa_qas(rng, scene)
    o = rng.choice(scene["objects"])
    n = _count(scene, color=o["color"])
    qas = [("What can you see in this image?", scene["caption"]),
           (f"How many {o['color']} objects are there?",
            f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {o['color']} object{'s' * (n != 1)} in the image.")]
    if unique(scene, color=o["color"], shape=o["shape"]):
        qas.append((f"Where is the {o['color']} {o['shape']}?",
                    f"The {o['color']} {o['shape']} is at the {o['vertical']} {o['position']} of the image."))
    rng.shuffle(qas)
    return qas


def aokvqa_qas(rng: random.Random, scene: dict) -> list[tuple[str, str]]:
    """One multiple-choice question with lettered options, answered by the letter (A-OKVQA in the mix)."""
    o = rng.choice(scene["objects"])
    n = _count(scene, shape=o["shape"])
    if unique(scene, shape=o["shape"]) and rng.random() < 0.5:
        q, gold, pool = f"What color is the {o['shape']}?", o["color"], list(COLORS)
    elif unique(scene, color=o["color"]) and rng.random() < 0.5:
        q, gold, pool = f"What shape is the {o['color']} object?", o["shape"], list(SHAPES)
    else:
        q, gold, pool = f"How many {o['shape']}s are in the image?", str(n), [str(k) for k in range(1, 7)]
    options = [gold, *rng.sample([x for x in pool if x != gold], 3)]
    rng.shuffle(options)
    listing = "\n".join(f"{'ABCD'[i]}. {x}" for i, x in enumerate(options))
    return [(f"{q}\n{listing}\n{OPTION_LETTER}", "ABCD"[options.index(gold)])]


def _gqa_qas(rng: random.Random, scene: dict, yes_share: float = YES_SHARE) -> list[tuple[str, str]]:
    """GQA-style short answers (lowercase) about colours, shapes, sides, counts and existence.

    Existence questions name a thing in the image `yes_share` of the time and otherwise one that is truly
    absent, POPE's form: a model learns to say no only from questions whose answer is no, and a random draw
    (mostly present among 1-4 objects of 4 shapes) would teach it that "yes" is nearly always right.
    """
    o = rng.choice(scene["objects"])
    pairs = [(c, s) for c in COLORS for s in SHAPES if not _count(scene, color=c, shape=s)]
    shapes = [s for s in SHAPES if not _count(scene, shape=s)]
    color, shape = (o["color"], o["shape"]) if rng.random() < yes_share else rng.choice(pairs)
    thing = o["shape"] if rng.random() < yes_share or not shapes else rng.choice(shapes)
    qas = [(f"Is there a {color} {shape} in the image?", "yes" if _count(scene, color=color, shape=shape) else "no"),
           (f"Is there a {thing} in the image?", "yes" if _count(scene, shape=thing) else "no"),
           (f"How many {o['shape']}s are there?", str(_count(scene, shape=o["shape"])))]
    if unique(scene, shape=o["shape"]):
        qas.append((f"What color is the {o['shape']}?", o["color"]))
        qas.append((f"On which side is the {o['shape']}?", o["position"]))
    if unique(scene, color=o["color"]):
        qas.append((f"What shape is the {o['color']} object?", o["shape"]))
    rng.shuffle(qas)
    return qas[:4]


def _vg_qas(rng: random.Random, scene: dict) -> list[tuple[str, str]]:
    """Visual Genome region prompts as in the 665k mix: box -> description and description -> box."""
    qas = []
    for o in rng.sample(scene["objects"], min(2, len(scene["objects"]))):
        box, what = _norm_box(scene, o["box"]), f"{o['color']} {o['shape']}"
        if rng.random() < 0.5:
            qas.append((f"Please provide a short description for this region: {box}", f"{article(what).capitalize()}."))
        else:
            qas.append((f"Please provide the bounding box coordinate of the region this sentence describes: "
                        f"{article(what)}.", box))
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


def make_scenes(cfg: ToyConfig) -> list[dict]:
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


def mix_rows(cfg: ToyConfig, scenes: list[dict]) -> list[dict]:
    """The 665k rows: one conversation per image, plus text-only rows, shuffled as the real file is."""
    rng = random.Random(f"{cfg.seed}:mix")
    rows = []
    for s in scenes:
        qas = QAS[s["source"]](rng, s)
        suffix = SHORT_ANSWER if s["source"] in ("ocr_vqa", "gqa") else ""
        image_last = s["source"] == "coco" and rng.random() < 0.3  # LLaVA-Instruct puts it either side
        turns = _turns(qas, suffix=suffix, image_last=image_last)
        rows.append({"id": s["id"], "image": s["image"], "conversations": turns})
    for i in range(cfg.text_only):
        rid = "".join(rng.choice("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(7))
        rows.append({"id": f"{rid}_{i % 3}", "conversations": _turns_text(_text_only_qas(rng))})
    rng.shuffle(rows)
    return rows


def _turns_text(qas: list[tuple[str, str]]) -> list[dict]:
    """Conversation turns without an image (the ShareGPT-like rows)."""
    return [t for q, a in qas for t in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]
