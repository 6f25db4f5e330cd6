"""Can the toy language model learn a binding lookup at all? The lookup alone, on a fresh LM, in a plain loop.

    .venv/bin/python experiments/miniature/recall.py NAME [seed=0] [init=0.02] [lr=1e-3] [steps=3000]
        [kinds=color] [then=color,shape,side] [switch=2500] [several=0] [phases=color:2000,lookup:1000,choice]
        [layers=2] [hidden=64] [decay=0] [attn=0] [families=0.8] [order=0123] [short=0] [distinct=0]

A fresh LM of the toy world's text config (`data/toy-miniature/model`'s, at 2 layers or `layers`), with `init` as
transformers' `initializer_range`, trained with AdamW (constant rate after 50 warmup steps, clip 1.0, one thread) on
`USER: {grid caption}\\n{question} ASSISTANT: {answer}</s>` for `kinds` of binding question (`color`: "What color is
the {shape}?", `shape`: "What shape is the {color} object?", `side`: "On which side is the {shape}?"), each about
a fresh scene; `several=1` draws scenes of 2-4 objects only; with `then`, the kinds switch at step `switch`.
`cside` asks the side by colour ("On which side is the red object?": the colour as the key, as shape by colour),
`cwhat` the shape by colour without the word "shape" ("What is the red object?").
`choice` is A-OKVQA's lettered choice (colour, shape or count), `cchoice` the held-out gate's (colour only),
`cchoice2` the same as a second round after "What color is the {shape}?" and its answer, and `lookup` a lettered
lookup ("Which option is red?", `toy.lm.lookup_qas`);
`phases` (`kinds:steps,...`, `+` joining kinds, the last phase runs to `steps`) replaces kinds/then/switch, and the
check then asks every kind named. `hidden` widens the LM (MLP 4x), `decay=1` decays the rate to 0 (cosine) over
the last phase, `attn=1` adds each head's attention to the asked object's caption cell (`attention`). `order`
permutes each cell's caption words (`1023`: "red circle circle left"; `013`: "circle red left"), `short=1` asks shape
by colour as "What shape is red?"; `distinct=1` trains on scenes whose shapes all differ (the check keeps its
scenes); `families` sets the share of objects drawn from the scene's shape family, the check's scenes included.
Every 250 steps: exact-match accuracy per kind on 600 held-out questions about scenes of several objects, where
naming a present object's attribute at random scores ~0.50 (colour) / 0.63 (shape) / 0.60 (side), and naming the
scene's commonest shape 0.67 (session 22).
Session 21 (README): at transformers' 0.02 colour never forms; at 0.05 it forms in 1,000-2,500 steps.
Writes `runs/recall-NAME.jsonl`.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from itertools import accumulate
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = Path("data/toy-miniature/model")


def questions(scene: dict, kinds: list[str]) -> list[tuple[str, str, str]]:
    """(kind, question, answer) of `kinds` that the scene can ask (the named attribute unique, as the mix asks)."""
    from seva_tasks.toy.heldout import draw_question
    from seva_tasks.toy.lm import lookup_qas
    from seva_tasks.toy.mix import aokvqa_qas, unique

    out, key = [], json.dumps(scene)  # the lettered options are drawn from the scene itself: the same every time
    for o in scene["objects"]:
        if unique(scene, shape=o["shape"]):
            out += [("color", f"What color is the {o['shape']}?", o["color"]),
                    ("side", f"On which side is the {o['shape']}?", o["position"])]
        if unique(scene, color=o["color"]):
            out += [("shape", f"What shape is the {o['color']} object?", o["shape"]),
                    ("cside", f"On which side is the {o['color']} object?", o["position"]),
                    ("cwhat", f"What is the {o['color']} object?", o["shape"])]
    if "choice" in kinds:
        (q, a), = aokvqa_qas(random.Random(key), scene)
        out.append(("choice", q, a))
    if {"cchoice", "cchoice2"} & set(kinds) and (qa := draw_question(random.Random(key), "choice", scene)):
        out.append(("cchoice", *qa))  # the held-out gate's lettered choice: an object's colour among four
        out.append(("cchoice2", *qa))  # the same after the colour question, answered, as a first round
    if "lookup" in kinds:
        (q, a), = lookup_qas(random.Random(key), scene)
        out.append(("lookup", q, a))
    return [q for q in out if q[0] in kinds]


def draw(rng: random.Random, kinds: list[str], several: bool, order: str = "0123", short: bool = False,
         distinct: bool = False) -> dict:
    """{kind, segments} (`toy.lm.segments`, the vicuna's bare format) about a fresh scene with a question of `kinds`.
    `order`: each cell's four caption words (shape, colour, shape, side) in this order ("1023": colour first);
    `short`: shape by colour asked as "What shape is {colour}?", the key word last; `distinct`: only scenes whose
    objects' shapes all differ (there, naming the scene's commonest shape is no better than a guess)."""
    from seva_tasks.toy import lm
    from seva_tasks.toy.scenes import random_scene

    while True:
        scene = random_scene(rng, "shapes", "recall.jpg")
        shapes = [o["shape"] for o in scene["objects"]]
        if distinct and len(set(shapes)) < len(shapes):
            continue
        if (asked := questions(scene, kinds)) and (len(scene["objects"]) > 1 or not several):
            kind, question, answer = rng.choice(asked)
            if short and kind == "shape":
                question = question.replace(" the ", " ").replace(" object?", "?")
            words = lm.caption(scene, 4).split()
            said = [words[k + int(i)] for k in range(0, len(words), 4) for i in order]  # each cell's words in `order`
            caption = " ".join(said)
            if kind == "cchoice2":  # "What color is the circle?" -> its colour, then the lettered question
                first = question.split("\n")[0]
                colour = next(o["color"] for o in scene["objects"] if first == f"What color is the {o['shape']}?")
                return {"kind": kind, "segments": lm.segments(caption, first, colour, more=[(question, answer)])}
            item = {"kind": kind, "segments": lm.segments(caption, question, answer)}
            if kind in ("color", "shape", "side", "cside", "cwhat"):  # the asked object's cell, for `attention`
                key, width = next(w.strip("?") for w in question.split() if w.strip("?") in said), len(order)
                cell = next(c for c in range(4) if key in said[c * width:(c + 1) * width])
                item |= {"said": said, "cell": cell, "width": width}
            return item


def batch(tok, items: list[dict]):
    """Right-padded (input ids, labels on the answer tokens, attention mask), encoded as `prompts.encode_batch` does."""
    import torch

    from seva_tasks.llava.prompts import encode_batch

    enc = encode_batch(tok, [it["segments"] for it in items])
    width = max(len(ids) for ids, _ in enc)
    x = torch.full((len(enc), width), tok.pad_token_id)
    y, mask = torch.full((len(enc), width), -100), torch.zeros((len(enc), width), dtype=torch.long)
    for j, (ids, loss) in enumerate(enc):
        x[j, :len(ids)], mask[j, :len(ids)] = torch.tensor(ids), 1
        y[j, :len(ids)] = torch.tensor([t if keep else -100 for t, keep in zip(ids, loss)])
    return x, y, mask


def attention(model, tok, items: list[dict]) -> dict[str, list[float]]:
    """Per layer, each head's mean attention from the position that predicts the answer's first token to the asked
    object's caption cell (the cell holding the question's key word: a quarter of the caption's tokens)."""
    import torch

    from seva_tasks.llava.prompts import encode_batch

    mass: dict[int, list] = {}
    for it, (ids, loss) in zip(items, encode_batch(tok, [it["segments"] for it in items])):
        cap = tok.convert_tokens_to_ids(["\u2581" + w for w in it["said"]])
        start = next(k for k in range(len(ids)) if ids[k:k + len(cap)] == cap)
        cell = range(start + it["cell"] * it["width"], start + (it["cell"] + 1) * it["width"])
        with torch.inference_mode():
            att = model(input_ids=torch.tensor([ids]), output_attentions=True).attentions
        at = loss.index(True) - 1
        for layer, a in enumerate(att):
            mass.setdefault(layer, []).append(a[0, :, at, list(cell)].sum(-1))
    return {f"attn{layer}": [round(x, 2) for x in torch.stack(m).mean(0).tolist()] for layer, m in mass.items()}


def main(name: str, *args: str) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from seva_tasks.toy import lm

    opt = {"seed": "0", "init": "0.02", "lr": "1e-3", "steps": "3000", "kinds": "color", "switch": "2500",
           "several": "0", **dict(a.split("=", 1) for a in args)}
    seed, steps, switch = int(opt["seed"]), int(opt["steps"]), int(opt["switch"])
    kinds, then = opt["kinds"].split(","), opt.get("then", opt["kinds"]).split(",")
    phases = [(p.split(":")[0].split("+"), int(p.split(":")[1]) if ":" in p else steps)
              for p in opt["phases"].split(",")] if "phases" in opt else [(kinds, switch), (then, steps)]
    ends = [*accumulate(n for _, n in phases[:-1]), steps]  # the last step of each phase
    tested = sorted({k for ks, _ in phases for k in ks}) if "phases" in opt else then
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(MODEL)
    text = json.loads((MODEL / "config.json").read_text())["text_config"]
    config = LlamaConfig(**{k: v for k, v in text.items() if k != "model_type"})
    config.initializer_range = float(opt["init"])
    config.num_hidden_layers = int(opt.get("layers", 2))  # the committed runs' default (the preset is 4 since session 24)
    if "hidden" in opt:  # a wider LM: the residual stream that carries the lookups' words, the MLP at 4x
        config.hidden_size = int(opt["hidden"])
        config.intermediate_size = 4 * config.hidden_size
    if opt.get("attn") == "1":
        config._attn_implementation = "eager"  # sdpa returns no attention weights
    model = LlamaForCausalLM(config)
    if "families" in opt:  # the share of a scene's objects drawn from its shape family (scenes.FAMILY_SHARE)
        from seva_tasks.toy import scenes
        scenes.FAMILY_SHARE = float(opt["families"])
    held = random.Random("recall-test")
    form = {"order": opt.get("order", "0123"), "short": opt.get("short") == "1"}
    several, distinct = opt["several"] == "1", opt.get("distinct") == "1"
    test = [draw(held, tested, True, **form) for _ in range(600)]
    rng = random.Random(f"{seed}:recall")
    adam = torch.optim.AdamW(model.parameters(), lr=float(opt["lr"]), weight_decay=0.0)
    decay = opt.get("decay") == "1"  # cosine to 0 over the last phase, after a constant rate before it
    start = ends[-2] if len(ends) > 1 else 0

    def rate(s: int) -> float:
        if decay and s >= start:
            return 0.5 * (1 + math.cos(math.pi * (s - start) / max(1, steps - start)))
        return min(1.0, (s + 1) / 50)

    warm = torch.optim.lr_scheduler.LambdaLR(adam, rate)
    out, rows, started = Path(__file__).parent / "runs" / f"recall-{name}.jsonl", [], time.time()
    for step in range(1, steps + 1):
        now = next(ks for (ks, _), end in zip(phases, ends) if step <= end)
        x, y, mask = batch(tok, [draw(rng, now, several, **form, distinct=distinct) for _ in range(32)])
        loss = model(input_ids=x, attention_mask=mask, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        adam.step(), warm.step(), adam.zero_grad()
        if step % 250 == 0:
            scores = lm.accuracy(model.eval(), tok, test)
            model.train()
            rows.append({"step": step, "seconds": round(time.time() - started), "loss": round(loss.item(), 3),
                         **{k: round(v, 3) for k, v in sorted(scores.items()) if k != "all"}})
            if opt.get("attn") == "1":  # on the check's first 100 questions of the binding kinds
                rows[-1].update(attention(model, tok, [t for t in test if "cell" in t][:100]))
            print(json.dumps(rows[-1]), flush=True)
            out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main(*sys.argv[1:])
