"""Can the toy language model learn a binding lookup at all? The lookup alone, on a fresh LM, in a plain loop.

    .venv/bin/python experiments/miniature/recall.py NAME [seed=0] [init=0.02] [lr=1e-3] [steps=3000]
        [kinds=color] [then=color,shape,side] [switch=2500] [several=0]

A fresh 2-layer LM of the toy world's text config (`data/toy-miniature/model`), with `init` as transformers'
`initializer_range`, trained with AdamW (constant rate after 50 warmup steps, clip 1.0, one thread) on
`USER: {grid caption}\\n{question} ASSISTANT: {answer}</s>` for `kinds` of binding question (`color`: "What color is
the {shape}?", `shape`: "What shape is the {color} object?", `side`: "On which side is the {shape}?"), each about
a fresh scene; `several=1` draws scenes of 2-4 objects only; with `then`, the kinds switch at step `switch`.
Every 250 steps: exact-match accuracy per kind on 600 held-out questions about scenes of several objects, where
naming a present object's attribute at random scores ~0.50 (colour) / 0.63 (shape) / 0.60 (side).
Session 21 (README): at transformers' 0.02 colour never forms; at 0.05 it forms in 1,000-2,500 steps.
Writes `runs/recall-NAME.jsonl`.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = Path("data/toy-miniature/model")


def questions(scene: dict, kinds: list[str]) -> list[tuple[str, str, str]]:
    """(kind, question, answer) of `kinds` that the scene can ask (the named attribute unique, as the mix asks)."""
    from seva_tasks.toy.mix import unique

    out = []
    for o in scene["objects"]:
        if unique(scene, shape=o["shape"]):
            out += [("color", f"What color is the {o['shape']}?", o["color"]),
                    ("side", f"On which side is the {o['shape']}?", o["position"])]
        if unique(scene, color=o["color"]):
            out.append(("shape", f"What shape is the {o['color']} object?", o["shape"]))
    return [q for q in out if q[0] in kinds]


def draw(rng: random.Random, kinds: list[str], several: bool) -> tuple[str, str, str]:
    """(kind, prompt, answer) about a fresh scene that has a question of `kinds`."""
    from seva_tasks.toy.scenes import random_scene
    from seva_tasks.toy.tower import grid_caption

    while True:
        scene = random_scene(rng, "shapes", "recall.jpg")
        if (asked := questions(scene, kinds)) and (len(scene["objects"]) > 1 or not several):
            kind, question, answer = rng.choice(asked)
            return kind, f"USER: {grid_caption(scene, 4)}\n{question} ASSISTANT:", f" {answer}</s>"


def batch(tok, rows: list[tuple[str, str, str]]):
    import torch

    ids, labels = [], []
    for _, prompt, answer in rows:
        p, a = tok(prompt).input_ids, tok(answer, add_special_tokens=False).input_ids
        ids.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, ids))
    x = torch.full((len(ids), width), tok.pad_token_id)
    y, mask = torch.full((len(ids), width), -100), torch.zeros((len(ids), width), dtype=torch.long)
    for j, (i, lab) in enumerate(zip(ids, labels)):
        x[j, :len(i)], y[j, :len(lab)], mask[j, :len(i)] = torch.tensor(i), torch.tensor(lab), 1
    return x, y, mask


def main(name: str, *args: str) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    opt = {"seed": "0", "init": "0.02", "lr": "1e-3", "steps": "3000", "kinds": "color", "switch": "2500",
           "several": "0", **dict(a.split("=", 1) for a in args)}
    seed, steps, switch = int(opt["seed"]), int(opt["steps"]), int(opt["switch"])
    kinds, then = opt["kinds"].split(","), opt.get("then", opt["kinds"]).split(",")
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(MODEL)
    text = json.loads((MODEL / "config.json").read_text())["text_config"]
    config = LlamaConfig(**{k: v for k, v in text.items() if k != "model_type"})
    config.initializer_range = float(opt["init"])
    model = LlamaForCausalLM(config)
    held = random.Random("recall-test")
    test = [draw(held, then, True) for _ in range(600)]
    tx, ty, tmask = batch(tok, test)
    rng = random.Random(f"{seed}:recall")
    adam = torch.optim.AdamW(model.parameters(), lr=float(opt["lr"]), weight_decay=0.0)
    warm = torch.optim.lr_scheduler.LambdaLR(adam, lambda s: min(1.0, (s + 1) / 50))
    out, rows, started = Path(__file__).parent / "runs" / f"recall-{name}.jsonl", [], time.time()
    for step in range(1, steps + 1):
        x, y, mask = batch(tok, [draw(rng, then if step > switch else kinds, opt["several"] == "1") for _ in range(32)])
        loss = model(input_ids=x, attention_mask=mask, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        adam.step(), warm.step(), adam.zero_grad()
        if step % 250 == 0:
            with torch.inference_mode():
                pred = model.eval()(input_ids=tx, attention_mask=tmask).logits.argmax(-1)
            model.train()
            hit = ((pred[:, :-1] == ty[:, 1:]) | (ty[:, 1:] == -100)).all(1).tolist()
            per = {k: [h for (kind, _, _), h in zip(test, hit) if kind == k] for k in {t[0] for t in test}}
            rows.append({"step": step, "seconds": round(time.time() - started), "loss": round(loss.item(), 3),
                         **{k: round(sum(v) / len(v), 3) for k, v in sorted(per.items())}})
            print(json.dumps(rows[-1]), flush=True)
            out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main(*sys.argv[1:])
