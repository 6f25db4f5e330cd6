"""Can the toy LM bind attributes inside one token? A text phase on pseudo image tokens, no tower.

    .venv/bin/python experiments/miniature/pseudo.py NAME STEPS LR [toy.KEY=V ...]

The aligned tower gives every patch one token that points at several words at once (its shape, colour and
place); the LM must find the token whose colour is "red" and read its shape there. The caption text of the
LM phase teaches another circuit (the word before "circle"). Here the LM trains on what the tower will emit,
idealised: per patch of the 64-px input, the sum of the LM's own embeddings of the patch's labels
(`toy.tower.patch_labels`), zero for an empty patch, in place of `<image>`; questions as the LM phase asks
them. Held-out accuracy per kind on the same kind of input (teacher-forced exact match, as `toy.lm`).
Writes `runs/NAME.json`.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoProcessor, LlavaForConditionalGeneration  # noqa: E402

from seva_tasks import toy  # noqa: E402
from seva_tasks.llava.prompts import SHORT_ANSWER, encode_batch  # noqa: E402
from seva_tasks.stages.vicuna import VicunaConfig  # noqa: E402
from seva_tasks.toy import lm, mix, tower  # noqa: E402
from seva_tasks.toy.heldout import heldout, rates  # noqa: E402
from seva_tasks.toy.scenes import random_scene  # noqa: E402
from worlds import toy_config  # noqa: E402


def pseudo_labels(scene: dict, cfg) -> list[list[int]]:
    """Per patch: the word indices (into WORDS) of its labels; [] for an empty or ambiguous patch."""
    labels = tower.patch_labels(scene, cfg.image_size, cfg.patch_size)
    out = []
    for p in range(len(labels["shape"])):
        out.append([WORDS.index(v[labels[a][p] - 1]) for a, v in tower.ATTRIBUTES.items() if labels[a][p] > 0])
    return out


WORDS = [w for v in tower.ATTRIBUTES.values() for w in v]


def encode(tok, image_id: int, n_img: int, scenes_qas: list[tuple[dict, str, str]], cfg):
    convs = [lm.segments("<image>", q, a) for _, q, a in scenes_qas]
    out = []
    for (scene, _, _), (ids, loss) in zip(scenes_qas, encode_batch(tok, convs)):
        at = ids.index(image_id)
        ids = ids[:at] + [image_id] * n_img + ids[at + 1:]
        loss = loss[:at] + [False] * n_img + loss[at + 1:]
        out.append((ids, loss, pseudo_labels(scene, cfg)))
    return out


def batch_forward(model, word_ids: torch.Tensor, batch, image_id: int, pad_id: int):
    width = max(len(ids) for ids, _, _ in batch)
    ids = torch.full((len(batch), width), pad_id)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for j, (row, _, _) in enumerate(batch):
        ids[j, :len(row)], mask[j, :len(row)] = torch.tensor(row), 1
    emb_layer = model.get_input_embeddings()
    emb = emb_layer(ids)  # `<image>` and `<pad>` are in the vocabulary; their rows are overwritten or masked
    words = emb_layer(word_ids)  # [W, T, H] -> mean over a word's tokens
    words = words.mean(1)
    tokens = []
    for _, _, patches in batch:
        tokens.append(torch.stack([words[p].sum(0) if p else torch.zeros(words.shape[1]) for p in patches]))
    img = torch.cat(tokens)
    emb = emb.masked_scatter((ids == image_id).unsqueeze(-1), img)
    out = model.model.language_model(inputs_embeds=emb, attention_mask=mask)
    return model.lm_head(out.last_hidden_state), ids


def main(name: str, steps: str, lr: str, *overrides: str) -> None:
    torch.set_num_threads(1)
    toy_kw = dict(o.removeprefix("toy.").split("=", 1) for o in overrides)
    toy_cfg = toy_config(toy_kw)
    toy.ensure(toy_cfg)
    base = toy.model_dir(toy_cfg)
    proc = AutoProcessor.from_pretrained(base, local_files_only=True)
    tok = proc.tokenizer
    model = LlavaForConditionalGeneration.from_pretrained(base, local_files_only=True, dtype=torch.float32)
    image_id, pad_id, n_img = model.config.image_token_index, tok.pad_token_id, model.config.image_seq_length
    vcfg = model.config.vision_config
    pieces = [tok(f" {w}", add_special_tokens=False).input_ids for w in WORDS]
    width = max(map(len, pieces))
    word_ids = torch.tensor([p + [p[-1]] * (width - len(p)) for p in pieces])

    rng = random.Random("0:pseudo")
    steps, lr, bs = int(steps), float(lr), 32
    params = [p for n, p in model.named_parameters() if "vision_tower" not in n and "multi_modal_projector" not in n]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, s / 50) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    history = []
    model.train()
    for step in range(1, steps + 1):
        items = []
        for _ in range(bs):
            scene = random_scene(rng, "shapes", "p.jpg")
            qas = mix.aokvqa_qas(rng, scene) if rng.random() < VicunaConfig().choice_share else mix.QAS["gqa"](rng, scene)
            items.append((scene, *qas[0]))
        batch = encode(tok, image_id, n_img, items, vcfg)
        logits, ids = batch_forward(model, word_ids, batch, image_id, pad_id)
        labels = torch.full_like(ids, -100)
        for j, (row, loss, _) in enumerate(batch):
            labels[j, :len(row)] = torch.tensor([t if x else -100 for t, x in zip(row, loss)])
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0:
            history.append({"step": step, "loss": round(loss.item(), 4)})
            print(history[-1], flush=True)
    model.eval()
    held = heldout(0, 560, kinds=lm.KINDS, stream="pseudo-heldout")
    hits = []
    for i in range(0, len(held), 64):
        chunk = held[i:i + 64]
        batch = encode(tok, image_id, n_img, [(it["scene"], it["question"].removesuffix(f"\n{SHORT_ANSWER}"), it["answer"])
                                              for it in chunk], vcfg)
        with torch.inference_mode():
            logits, _ = batch_forward(model, word_ids, batch, image_id, pad_id)
        pred = logits.argmax(-1)
        for j, (row, loss, _) in enumerate(batch):
            at = [k for k, x in enumerate(loss) if x]
            hits.append((chunk[j]["kind"], all(pred[j, k - 1].item() == row[k] for k in at)))
    acc = rates(hits)
    record = {"settings": {"steps": steps, "lr": lr, "toy": toy_kw}, "heldout": acc, "metrics": history}
    (Path(__file__).parent / "runs" / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(acc))


if __name__ == "__main__":
    main(*sys.argv[1:])
