"""Vision pretraining of the toy LLaVA's tower: a per-patch stand-in for CLIP, before instruction tuning.

LLaVA-1.5 starts from a CLIP tower that already tells objects apart, and freezes it. The toy's tower
is random; learning to see through a one- or two-token answer loss alone is slow and weak (shape at
chance in the first toy world). So this phase trains the tower on a dense, cheap objective first:
from the features LLaVA reads (`vision_feature_layer`), linear heads predict, for every patch, the shape
and the colour of the object centred in it, or "empty" for a patch no object touches. Patches an object
touches without being centred in them carry no label (they are neither that object nor empty).

With `words` (the token ids of each shape and colour name), the phase also aligns: every patch's
*projected* token (what the language model will read) is scored by cosine against the language model's
own, frozen, input embeddings of those names (a learned vector stands for "empty"), with the same labels.
That is CLIP's text side and LLaVA's stage-1 projector alignment in one objective: the image tokens point
at the words the questions use, which a language model pretrained on text (`toy.lm`) already looks for.

Scenes are fresh shape scenes from the seed stream `"{seed}:tower"`, padded to a square with the mean
colour and resized as the engines feed the model; the check uses `"{seed}:tower-heldout"`.
"""

from __future__ import annotations

import random

from seva_tasks.llava.images import normalize, square_tensor
from seva_tasks.toy.scenes import COLORS, SHAPES, random_scene, render

IGNORE = -100
EMPTY = 0  # class 0 of both heads; shapes and colours are 1.. in SHAPES / COLORS order


def patch_labels(scene: dict, image_size: int, patch_size: int) -> tuple[list[int], list[int]]:
    """(shape, colour) class per patch, row-major, in the model's square input.

    The image is padded to a square (centred) and scaled to `image_size`, as `expand2square` does.
    """
    side = max(scene["width"], scene["height"])
    dx, dy, scale = (side - scene["width"]) / 2, (side - scene["height"]) / 2, image_size / side
    n = image_size // patch_size
    shape, color = [EMPTY] * (n * n), [EMPTY] * (n * n)
    centred: dict[int, list[dict]] = {}
    for o in scene["objects"]:
        x0, y0, x1, y1 = ((v + d) * scale for v, d in zip(o["box"], (dx, dy, dx, dy)))
        for r in range(int(y0 // patch_size), min(n - 1, int((y1 - 1e-6) // patch_size)) + 1):
            for c in range(int(x0 // patch_size), min(n - 1, int((x1 - 1e-6) // patch_size)) + 1):
                shape[r * n + c] = color[r * n + c] = IGNORE  # touched: not empty
        at = int((y0 + y1) / 2 // patch_size) * n + int((x0 + x1) / 2 // patch_size)
        centred.setdefault(at, []).append(o)
    for at, objs in centred.items():
        if len(objs) == 1:  # two objects centred in one patch: no single right answer
            shape[at], color[at] = SHAPES.index(objs[0]["shape"]) + 1, list(COLORS).index(objs[0]["color"]) + 1
    return shape, color


def batch(rng: random.Random, n: int, image_size: int, patch_size: int, mean) -> tuple:
    """`n` fresh scenes as (uint8 [n, 3, S, S], shape labels [n, P], colour labels [n, P])."""
    import torch

    scenes = [random_scene(rng, "shapes", "tower.jpg") for _ in range(n)]
    labels = [patch_labels(s, image_size, patch_size) for s in scenes]
    pixels = torch.stack([square_tensor(render(s), image_size, mean) for s in scenes])
    return pixels, torch.tensor([lab[0] for lab in labels]), torch.tensor([lab[1] for lab in labels])


ALIGN_SCALE = 10.0  # cosine -> logit temperature of the aligned heads (CLIP learns its own; fixed here)


class Heads:
    """The vision tower with per-patch shape and colour heads on LLaVA's feature layer, and with `words`
    ({name: token ids}) the aligned heads on the projected tokens: (shape, colour[, aligned shape, aligned colour])."""

    def __init__(self, model, words: dict[str, list[int]] | None = None):
        import torch

        self.tower = model.model.vision_tower
        self.layer = model.config.vision_feature_layer
        hidden = model.config.vision_config.hidden_size
        self.shape = torch.nn.Linear(hidden, len(SHAPES) + 1)
        self.color = torch.nn.Linear(hidden, len(COLORS) + 1)
        self.projector = model.model.multi_modal_projector if words else None
        if words:
            emb = model.get_input_embeddings().weight.detach()  # frozen: the words keep their meaning
            self.shape_words = torch.stack([emb[words[w]].mean(0) for w in SHAPES])
            self.color_words = torch.stack([emb[words[w]].mean(0) for w in COLORS])
            self.empty = torch.nn.Parameter(0.02 * torch.randn(2, emb.shape[1]))

    def parameters(self) -> list:
        aligned = [*self.projector.parameters(), self.empty] if self.projector else []
        return [*self.tower.parameters(), *self.shape.parameters(), *self.color.parameters(), *aligned]

    def __call__(self, pixel_values) -> tuple:
        import torch
        import torch.nn.functional as F

        feats = self.tower(pixel_values, output_hidden_states=True).hidden_states[self.layer][:, 1:]  # CLS dropped
        out = (self.shape(feats), self.color(feats))
        if self.projector is None:
            return out
        tokens = F.normalize(self.projector(feats), dim=-1)
        classes = [torch.cat([self.empty[i:i + 1], w]) for i, w in enumerate((self.shape_words, self.color_words))]
        return out + tuple(ALIGN_SCALE * tokens @ F.normalize(c, dim=-1).T for c in classes)


def train(model, *, steps: int, batch_size: int, learning_rate: float, seed: int, mean, std,
          words: dict[str, list[int]] | None = None, heldout: int = 512, logging_steps: int = 50, on_step=None) -> dict:
    """Train the tower (in place) and its heads (with `words`: and the projector, aligned); return the
    loss history and held-out per-patch accuracy."""
    import torch
    import torch.nn.functional as F
    from transformers import get_cosine_schedule_with_warmup

    cfg = model.config.vision_config
    heads = Heads(model, words)
    model.train()
    opt = torch.optim.AdamW(heads.parameters(), lr=learning_rate, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=steps // 20, num_training_steps=steps)
    rng, history = random.Random(f"{seed}:tower"), []
    for step in range(1, steps + 1):
        px, shape, color = batch(rng, batch_size, cfg.image_size, cfg.patch_size, mean)
        logits = heads(normalize(px, mean, std))
        loss = sum(F.cross_entropy(lg.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
                   for lg, y in zip(logits, (shape, color, shape, color)))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(heads.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % logging_steps == 0 or step == steps:
            history.append({"phase": "tower", "step": step, "loss": round(loss.item(), 4)})
        if on_step:
            on_step(step, steps)
    model.eval()
    return {"history": history, "heldout": accuracy(heads, heldout, seed, cfg.image_size, cfg.patch_size, mean, std)}


def accuracy(heads: Heads, n: int, seed: int, image_size: int, patch_size: int, mean, std) -> dict[str, float]:
    """Per-patch accuracy on `n` fresh scenes: shape and colour where an object is centred, and how
    often an empty patch is called empty (a tower that sees phantoms fails this one)."""
    import torch

    if not n:
        return {}
    px, shape, color = batch(random.Random(f"{seed}:tower-heldout"), n, image_size, patch_size, mean)
    with torch.inference_mode():
        logits = heads(normalize(px, mean, std))
    obj, empty = shape > EMPTY, shape == EMPTY
    out = {"objects": int(obj.sum())}
    for prefix, at in (("", 0), ("aligned_", 2))[:len(logits) // 2]:
        ps, pc = logits[at].argmax(-1), logits[at + 1].argmax(-1)
        out.update({f"{prefix}shape": round((ps[obj] == shape[obj]).float().mean().item(), 4),
                    f"{prefix}color": round((pc[obj] == color[obj]).float().mean().item(), 4),
                    f"{prefix}empty": round((ps[empty] == EMPTY).float().mean().item(), 4)})
    return out
