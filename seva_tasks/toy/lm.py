"""The toy Vicuna: the tiny LLaVA's language model trained on text first, as LLaVA-1.5 starts from Vicuna.

Why (experiments/miniature/README.md): from random weights, the toy's 2-layer Llama never leaves the
label prior on existence questions ("Is there a circle in the image?" answered "yes" every time) at the
instruction-tuning rates the toy used (2e-3), and at 1e-4 a 35-token system prompt in front of a handful
of content tokens keeps it there too. A model that first learned the question types on short text
conversations starts instruction tuning with the circuits it needs and only has to find the words in
the image tokens (fastest when `toy.tower`'s aligned phase has pointed those tokens at the words).

Data: one-turn conversations `USER: {caption}\\n{question} ASSISTANT: {answer}</s>` about fresh shape
scenes (seed stream `"{seed}:lm"`): the scene's caption stands where the image will be, the question is
one of the mix's GQA-style templates, or A-OKVQA's lettered choice, or a lettered lookup for a share of them;
`bindings` are colour-by-shape questions alone, the vicuna stage's first phase; `compositions` the gate's lettered
choice with its two parts, its second.
Bare (`template="bare"`): no system prompt and no short-answer suffix. With `template="vicuna_v1"`: LLaVA's
conversation with its system prompt, and GQA's short-answer suffix as the mix asks it, the format instruction
tuning, the gates and the benchmarks put the image in (a vicuna trained bare reads that format at 0.26 against 0.90
bare: experiments/miniature, session 15). With `template="both"`: each conversation in one of the two
(`v1_share` of them in vicuna_v1); its held-out check asks in vicuna_v1, the format downstream. Loss on the
answer and its `</s>` only. No image goes in, so only the language model's weights change.

Check: held-out questions of every image kind but genre (`heldout`'s templates, stream `"{seed}:lm-heldout"`),
captions in place of images, scored by exact match of every answer token under teacher forcing (what
greedy decoding would produce).
"""

from __future__ import annotations

import random
from typing import Literal

from seva_tasks.llava.prompts import SEP2, SHORT_ANSWER, conversation, encode_batch
from seva_tasks.toy import mix, tower
from seva_tasks.toy.heldout import HELDOUT_KINDS, draw_question, rates
from seva_tasks.toy.heldout import heldout as heldout_items
from seva_tasks.toy.scenes import random_scene

# Shares of the training conversations (the vicuna stage's defaults). With the lookups, a 4-layer LM learned
# lettered choice in text on 2 seeds of 3 in 6,000 steps; without, 1 of 3 at 50 % choice in 8,000
# (experiments/miniature, session 8: b14-b16 against b11-b13).
CHOICE_SHARE = 0.3  # lettered choice (A-OKVQA's form)
LOOKUP_SHARE = 0.2  # lettered lookups whose question names the answer ("Which option is red?")
KINDS = tuple(k for k in HELDOUT_KINDS if k != "genre")  # a book's genre is not in its caption
Template = Literal["bare", "vicuna_v1", "both"]
V1_SHARE = 0.5  # with template "both": the share of conversations in vicuna_v1, the rest bare


def segments(caption: str, question: str, answer: str, template: Template = "bare",
             more: list[tuple[str, str]] | tuple = ()) -> list[tuple[str, bool]]:
    """One conversation as (text, in_loss) pieces, for `prompts.encode`: bare, or in `template` (LLaVA's
    `preprocess_v1`, the caption where `<image>` would be) with the short-answer suffix of a GQA-style question.
    `more`: further (question, answer) rounds about the same caption, each `USER: {q} ASSISTANT: {a}</s>`."""
    turns = [(q.removesuffix(f"\n{SHORT_ANSWER}"), a) for q, a in [(question, answer), *more]]
    if template == "bare":
        return [piece for i, (q, a) in enumerate(turns)
                for piece in ((f"USER: {caption}\n{q} ASSISTANT:" if i == 0 else f"USER: {q} ASSISTANT:", False),
                              (f" {a}{SEP2}", True))]
    # as the mix asks GQA's questions (a lettered one has its own instruction)
    turns = [(q if "\nA. " in q else f"{q}\n{SHORT_ANSWER}", a) for q, a in turns]
    return conversation([(f"{caption}\n{turns[0][0]}", turns[0][1]), *turns[1:]], template, image=False)


def lookup_qas(rng: random.Random, scene: dict) -> list[tuple[str, str]]:
    """A lettered choice whose question names the right option: finding an option and reading its letter,
    the half of a lettered choice that needs no image (Vicuna brings it from text)."""
    (question, letter), = mix.aokvqa_qas(rng, scene)
    _, *options, instruction = question.split("\n")
    gold = options["ABCD".index(letter)].split(". ", 1)[1]
    return [("\n".join([f"Which option is {gold}?", *options, instruction]), letter)]


BINDING = ("color", "shape", "side")  # the kinds that name one object of several by another attribute


def bindings(seed: int | str, n: int, grid: int = 0, template: Template = "bare") -> list[list[tuple[str, bool]]]:
    """`n` conversations that each ask "What color is the {shape}?" about a fresh scene of several objects from
    `"{seed}:bind"` whose shape is unique (`caption` in the image's place): a lookup that needs the caption's word
    order, not only its words (the word after the matching shape). A lone object's colour is the caption's only colour
    and teaches no lookup: without those scenes it formed in 1,000-2,500 steps on six seeds of six (at
    `toy.init_std` 0.05), with them not in 3,000 on the stage's first try (experiments/miniature, session 21)."""
    rng = random.Random(f"{seed}:bind")
    out: list[list[tuple[str, bool]]] = []
    while len(out) < n:
        scene = random_scene(rng, "shapes", f"bind/{len(out):06d}.jpg")
        objects = [o for o in scene["objects"] if mix.unique(scene, shape=o["shape"])]
        if objects and len(scene["objects"]) > 1:
            o = rng.choice(objects)
            out.append(segments(caption(scene, grid), f"What color is the {o['shape']}?", o["color"], template))
    return out


def compositions(seed: int | str, n: int, grid: int = 0, template: Template = "bare",
                 lookups: bool = True) -> list[list[tuple[str, bool]]]:
    """`n` conversations about fresh scenes of several objects from `"{seed}:compose"`, each one of the scene's
    questions drawn at random: "What color is the {shape}?" (each unique shape), the held-out gate's lettered choice
    (that colour among four, `heldout`'s form) and, with `lookups`, a lettered lookup ("Which option is red?").
    Lettered choice composes the first lookup with the option's letter; in a 4-layer LM with both parts in the mix
    it forms (the vicuna stage: 1,500-3,000 steps, session 24), at 2-3 layers not in 10,000 (experiments/miniature,
    session 23, `recall.py cc-*`)."""
    rng = random.Random(f"{seed}:compose")
    out: list[list[tuple[str, bool]]] = []
    while len(out) < n:
        scene = random_scene(rng, "shapes", f"compose/{len(out):06d}.jpg")
        if len(scene["objects"]) < 2:
            continue
        asked = [(f"What color is the {o['shape']}?", o["color"]) for o in scene["objects"]
                 if mix.unique(scene, shape=o["shape"])]
        if choice := draw_question(rng, "choice", scene):
            asked.append(choice)
        if lookups:
            asked += lookup_qas(rng, scene)
        if asked:
            out.append(segments(caption(scene, grid), *rng.choice(asked), template))
    return out


def caption(scene: dict, grid: int = 0) -> str:
    """What stands where the image will be: the scene's sentence, or with `grid` (patches per side) the words its
    image tokens name under the tower's roles (`tower.grid_caption`)."""
    return tower.grid_caption(scene, grid) if grid else scene["caption"]


def conversations(seed: int | str, n: int, choice_share: float = CHOICE_SHARE, lookup_share: float = LOOKUP_SHARE,
                  grid: int = 0, template: Template = "bare", v1_share: float = V1_SHARE,
                  turns: int = 1) -> list[list[tuple[str, bool]]]:
    """`n` training conversations, each about a fresh scene from `"{seed}:lm"` (`caption`): a lettered choice for
    `choice_share` of them, a lettered lookup (`lookup_qas`) for `lookup_share`, else GQA-style questions, up to
    `turns` rounds of them (the mix's own, as its rows are multi-turn); each in `template` (with "both",
    vicuna_v1 for `v1_share` of them). More turns draw nothing more: each conversation's first round stays."""
    rng = random.Random(f"{seed}:lm")
    out: list[list[tuple[str, bool]]] = []
    while len(out) < n:
        scene = random_scene(rng, "shapes", f"lm/{len(out):06d}.jpg")
        draw = rng.random()
        if draw < lookup_share:
            qas = lookup_qas(rng, scene)
        elif draw < lookup_share + choice_share:
            qas = mix.aokvqa_qas(rng, scene)
        else:
            qas = mix.QAS["gqa"](rng, scene)
        form = template if template != "both" else "vicuna_v1" if rng.random() < v1_share else "bare"
        # the mix shuffles its questions: the first is random
        out.append(segments(caption(scene, grid), *qas[0], form, more=qas[1:turns]))
    return out


def examples(tokenizer, seed: int | str, n: int, make=None, **options) -> list[dict]:
    """Tokenized training conversations (`make`'s, by default `conversations`, with its options) in `toy.fit`'s
    example format (no pixels)."""
    return [{"input_ids": ids, "labels": [t if x else -100 for t, x in zip(ids, loss)], "pixels": None}
            for ids, loss in encode_batch(tokenizer, (make or conversations)(seed, n, **options))]


def heldout(seed: int, n: int, grid: int = 0, template: Template = "bare", stream: str = "lm-heldout",
            kinds: tuple[str, ...] = KINDS, by_objects: bool = False) -> list[dict]:
    """Held-out text items: {kind, answer, segments}, the image questions with the caption in the image's place,
    on scenes from `stream` (another stream: a check whose questions the reported one never asks). With
    `by_objects` each kind is split into scenes of one object ("color1": no binding needed) and of more ("color2")."""
    items = heldout_items(seed, n, kinds=kinds, stream=stream)
    template = "vicuna_v1" if template == "both" else template
    split = (lambda it: "2" if len(it["scene"]["objects"]) > 1 else "1") if by_objects else (lambda it: "")
    return [{"kind": it["kind"] + split(it), "answer": it["answer"],
             "segments": segments(caption(it["scene"], grid), it["question"], it["answer"], template)} for it in items]


def accuracy(model, tokenizer, items: list[dict], batch: int = 64) -> dict[str, float]:
    """Per-kind share of items whose every answer token (and `</s>`) is the model's argmax."""
    import torch

    hits = []
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        enc = encode_batch(tokenizer, [it["segments"] for it in chunk])
        width = max(len(ids) for ids, _ in enc)
        ids = torch.full((len(enc), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for j, (row, _) in enumerate(enc):
            ids[j, :len(row)], mask[j, :len(row)] = torch.tensor(row), 1
        with torch.inference_mode():
            pred = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
        for j, (row, loss) in enumerate(enc):
            at = [k for k, x in enumerate(loss) if x]  # answer positions; each is predicted from k - 1
            hits.append((chunk[j]["kind"], all(pred[j, k - 1].item() == row[k] for k in at)))
    return rates(hits)
