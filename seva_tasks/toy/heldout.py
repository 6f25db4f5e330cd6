"""Held-out questions: does a toy model see? Its answers to fresh scenes, per question kind.

The `pretrain` stage asks these after training and writes the accuracies to its manifest, next to
the bar a blind model reaches (always the kind's commonest true answer). The questions use the
mix's templates on scenes from their own seed stream (`"{seed}:pretrain-heldout"`), so no training
scene repeats; answers are generated greedily with transformers, images padded as the engines pad them.
"""

from __future__ import annotations

import random
from pathlib import Path

from seva_tasks.llava.prompts import OPTION_LETTER, SHORT_ANSWER
from seva_tasks.toy.model import prompt
from seva_tasks.toy.scenes import COLORS, FAMILIES, SHAPES, random_scene, render

HELDOUT_KINDS = ("color", "shape", "count", "side", "exists", "pope", "choice", "genre")


def heldout(seed: int, n: int, kinds: tuple[str, ...] = HELDOUT_KINDS, stream: str = "pretrain-heldout") -> list[dict]:
    """`n` questions with one true short answer each, on scenes from their own seed stream.

    Item: {kind, question (with the short-answer suffix), answer, scene}; `kinds` take turns.
    """
    rng = random.Random(f"{seed}:{stream}")
    items: list[dict] = []
    while len(items) < n:
        kind = kinds[len(items) % len(kinds)]
        scene = random_scene(rng, "book" if kind == "genre" else "shapes", f"heldout/{len(items):05d}.jpg")
        qa = draw_question(rng, kind, scene)
        if qa:
            question = qa[0] if kind == "choice" else f"{qa[0]}\n{SHORT_ANSWER}"
            items.append({"kind": kind, "question": question, "answer": qa[1], "scene": scene})
    return items


def draw_question(rng: random.Random, kind: str, scene: dict) -> tuple[str, str] | None:
    """One question of `kind` about `scene` in the mix's templates, or None if it would be ambiguous.

    Yes/no kinds are balanced: `exists` asks about a colour and shape, `pope` about a shape alone
    (POPE's form), each present half of the time and otherwise absent.
    """
    if kind == "genre":
        return "What is the genre of this book?", scene["book"]["genre"]
    objs = scene["objects"]
    o = rng.choice(objs)
    same_shape = sum(x["shape"] == o["shape"] for x in objs)
    if kind == "color" and same_shape == 1:
        return f"What color is the {o['shape']}?", o["color"]
    if kind == "side" and same_shape == 1:
        return f"On which side is the {o['shape']}?", o["position"]
    if kind == "shape" and sum(x["color"] == o["color"] for x in objs) == 1:
        return f"What shape is the {o['color']} object?", o["shape"]
    if kind == "count":
        return f"How many {o['shape']}s are there?", str(same_shape)
    if kind == "exists":
        absent = [(c, s) for c in COLORS for s in SHAPES if not any(x["color"] == c and x["shape"] == s for x in objs)]
        c, s = (o["color"], o["shape"]) if rng.random() < 0.5 else rng.choice(absent)
        return f"Is there a {c} {s} in the image?", "no" if (c, s) in absent else "yes"
    if kind == "pope":
        absent = [s for s in SHAPES if not any(x["shape"] == s for x in objs)]
        if not absent:
            return None
        # a third of the negatives as POPE's adversarial split asks: the absent partner of a present shape
        partners = [s for s in absent if any(s in f and x["shape"] in f for f in FAMILIES for x in objs)]
        negatives = partners if partners and rng.random() < 1 / 3 else absent
        s = o["shape"] if rng.random() < 0.5 else rng.choice(negatives)
        return f"Is there a {s} in the image?", "no" if s in absent else "yes"
    if kind == "choice" and same_shape == 1:  # A-OKVQA's form; the answer is a letter
        options = [o["color"], *rng.sample([c for c in COLORS if c != o["color"]], 3)]
        rng.shuffle(options)
        listing = "\n".join(f"{'ABCD'[i]}. {c}" for i, c in enumerate(options))
        return f"What color is the {o['shape']}?\n{listing}\n{OPTION_LETTER}", "ABCD"[options.index(o["color"])]
    return None


def answer_matches(text: str, gold: str) -> bool:
    """Exact match after lowercasing and dropping a trailing full stop."""
    return text.strip().rstrip(".").strip().lower() == gold.lower()


def load(model_dir: Path):
    """(model, processor) from a model directory, for `ask`."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    proc = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    return LlavaForConditionalGeneration.from_pretrained(model_dir, local_files_only=True).eval(), proc


def _image(item: dict):
    """An item's image: its scene rendered, or its `image` file (a benchmark's, opened as the engines open it)."""
    from seva_tasks.llava.images import load_rgb

    return render(item["scene"]) if "scene" in item else load_rgb(item["image"])


def ask(model, proc, items: list[dict], batch: int = 32, max_new_tokens: int = 8, noise_step: int = 0,
        seed: int = 0, template=prompt) -> list[str]:
    """Greedy transformers answers to held-out items (images padded to square as the engines do), each question
    put in `template` (the conversation format; default the pipeline's). An item's image is its `scene` rendered
    or its `image` file.

    With `noise_step`, each image is noised as the generate stage noises SeVa's rejected side (exact
    mode: diffusion noise on the processor's normalized tensor), item i from `row_seed(seed, "heldout-i")`.
    """
    import torch
    from PIL import Image

    from seva_tasks.llava.images import expand2square
    from seva_tasks.llava.noise import add_diffusion_noise, row_seed

    proc.tokenizer.padding_side = "left"
    size, mean = model.config.vision_config.image_size, proc.image_processor.image_mean
    fill = tuple(int(m * 255) for m in mean)
    answers = []
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        images = [expand2square(_image(it), fill).resize((size, size), Image.BICUBIC) for it in chunk]
        enc = proc(images=images, text=[template(it["question"]) for it in chunk], padding=True, return_tensors="pt")
        if noise_step:
            seeds = [row_seed(seed, f"heldout-{i + j}") for j in range(len(chunk))]
            enc["pixel_values"] = add_diffusion_noise(enc["pixel_values"], noise_step, seeds)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=proc.tokenizer.pad_token_id)
        answers += proc.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return answers


def accuracy(model, proc, items: list[dict], answers: list[str] | None = None) -> dict[str, float]:
    """Held-out accuracy per question kind and overall (`all`), of `answers` if given (else asked now)."""
    answers = ask(model, proc, items) if answers is None else answers
    return rates([(it["kind"], answer_matches(a, it["answer"])) for it, a in zip(items, answers)])


def majority(items: list[dict]) -> dict[str, float]:
    """The accuracy of always giving each kind's most common true answer: the bar to clear."""
    from collections import Counter

    common = {k: Counter(it["answer"] for it in items if it["kind"] == k).most_common(1)[0][0]
              for k in {it["kind"] for it in items}}
    return rates([(it["kind"], it["answer"] == common[it["kind"]]) for it in items])


def rates(hits: list[tuple[str, bool]]) -> dict[str, float]:
    """The share of hits per kind and overall (`all`), to 4 decimals."""
    out = {k: round(sum(h for kk, h in hits if kk == k) / sum(kk == k for kk, _ in hits), 4) for k in dict(hits)}
    out["all"] = round(sum(h for _, h in hits) / max(1, len(hits)), 4)
    return out
