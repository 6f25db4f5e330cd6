"""Vision pretraining of the toy LLaVA's tower: a per-patch stand-in for CLIP, before instruction tuning.

LLaVA-1.5 starts from a CLIP tower that already tells objects apart, and freezes it. The toy's tower
is random; learning to see through a one- or two-token answer loss alone is slow and weak (shape at
chance in the first toy world). So this phase trains the tower on a dense, cheap objective first:
from the features LLaVA reads (`vision_feature_layer`), linear heads predict, for every patch, the shape,
the colour and the place (left/right, top/bottom) of the object that covers it, or "empty" for a patch no
object touches (`patch_labels`).

With `words` (the token ids of every attribute's words), the phase also aligns: every patch's
*projected* token (what the language model will read) is scored by cosine against the language model's
own, frozen, input embeddings of those words (a learned vector stands for "empty"), with the same labels.
That is CLIP's text side and LLaVA's stage-1 projector alignment in one objective: the image tokens point
at the words the questions use, which a language model pretrained on text (`toy.lm`) already looks for.

With `roles`, each aligned token names one word instead of four at once, and the image reads as a list: token
k describes cell k // 4 (top left, top right, bottom left, bottom right) by the role k % 4: its object's shape,
colour, shape again and side (`ROLES`), or the background's colour for an empty cell (`grid_words`), scored
against every word (`ROLE_WORDS`). "circle red circle left gray gray gray gray ..." is the `vicuna` stage's grid
caption, so what the LM learned to read in text is what the image tokens say (experiments/miniature, session 10).
The shape on both sides of the colour makes each lookup one attention hop from the word the question names.

Scenes are fresh shape scenes from the seed stream `"{seed}:tower"`, padded to a square with the mean
colour and resized as the engines feed the model; the check uses `"{seed}:tower-heldout"`.
"""

from __future__ import annotations

import random

from seva_tasks.llava.images import normalize, square_tensor
from seva_tasks.toy.scenes import BACKGROUNDS, COLORS, SHAPES, random_scene, render

IGNORE = -100
EMPTY = 0  # class 0 of every head; an attribute's values are 1.. in ATTRIBUTES order
# What a patch's object is labelled with: its shape and colour (CLIP's "what"), and where it is (the words
# "left"/"right" and "top"/"bottom" the questions use; without them the toy model answers "which side" at chance).
ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "color": tuple(COLORS), "position": ("left", "right"),
                                          "vertical": ("top", "bottom")}


COVER = 0.25  # share of a patch an object's box must cover for the patch to be labelled with it


def patch_labels(scene: dict, image_size: int, patch_size: int) -> dict[str, list[int]]:
    """{attribute: class per patch, row-major} in the model's square input.

    Every patch an object covers (its box: at least `COVER` of the patch) is labelled with that object, so
    all of an object's image tokens say what it is and where (the tower's attention sees the whole object);
    a patch it only grazes, or that two objects touch, carries no label; a patch no object touches is empty.
    A book cover's patches are labelled with the cover's colour, and its icon's with the icon's shape: the
    two things that tell a genre (else every cover patch would be aligned with "empty" and lose its colour).
    The image is padded to a square (centred) and scaled to `image_size`, as `expand2square` does.
    """
    side = max(scene["width"], scene["height"])
    dx, dy, scale = (side - scene["width"]) / 2, (side - scene["height"]) / 2, image_size / side
    n = image_size // patch_size

    def coverage(box: list[int]) -> dict[int, float]:
        """{patch: share of it inside `box`} for every patch the box touches."""
        x0, y0, x1, y1 = ((v + d) * scale for v, d in zip(box, (dx, dy, dx, dy)))
        out = {}
        for r in range(int(y0 // patch_size), min(n - 1, int((y1 - 1e-6) // patch_size)) + 1):
            for c in range(int(x0 // patch_size), min(n - 1, int((x1 - 1e-6) // patch_size)) + 1):
                w = min(x1, (c + 1) * patch_size) - max(x0, c * patch_size)
                h = min(y1, (r + 1) * patch_size) - max(y0, r * patch_size)
                out[r * n + c] = w * h / patch_size**2
        return out

    labels = {a: [EMPTY] * (n * n) for a in ATTRIBUTES}
    if scene.get("book"):
        for at, share in coverage([0, 0, scene["width"], scene["height"]]).items():  # shape stays empty
            labels["color"][at] = ATTRIBUTES["color"].index(scene["background"]) + 1 if share >= COVER else IGNORE
            labels["position"][at] = labels["vertical"][at] = IGNORE  # a cover is not a thing on the left
        for at, share in coverage(scene["book"]["icon_box"]).items():
            labels["shape"][at] = SHAPES.index(scene["book"]["icon"]) + 1 if share >= COVER else IGNORE
            labels["color"][at] = IGNORE  # drawn in ink, which no question names
        return labels
    owners: dict[int, list[tuple[dict, float]]] = {}
    for o in scene["objects"]:
        for at, share in coverage(o["box"]).items():
            owners.setdefault(at, []).append((o, share))
    for at, objs in owners.items():
        (o, share), alone = objs[0], len(objs) == 1
        for a, values in ATTRIBUTES.items():
            labels[a][at] = values.index(o[a]) + 1 if alone and share >= COVER else IGNORE
    return labels


BOOK_SHARE = 0.2  # of the tower's training scenes: book covers (colour and icon), the rest shape scenes


# What each of a cell's tokens names with `roles` (token k: cell k // 4, role k % 4). The shape stands before and
# after the colour, so "What color is the circle?" finds the token after a "circle", "What shape is the red object?"
# the one after "red", and "On which side...?" the one after the second "circle": each a single attention hop, which
# the 2-layer LM learns in text where a reading that needs two hops it does not (colour 0.1 with one shape token).
ROLES = ("shape", "color", "shape", "position")
ROLE_WORDS = (*COLORS, *SHAPES, "left", "right", *BACKGROUNDS)  # what a role token can say
CELLS = (("top", "left"), ("top", "right"), ("bottom", "left"), ("bottom", "right"))  # in token order


def grid_words(scene: dict, n: int) -> list[str]:
    """The word each of a scene's n x n image tokens names with `roles`: token k, of cell k // (n²/4) in `CELLS`
    order, names its object's `ROLES[k % 4]`, or the background colour for an empty cell; a book cover, its icon
    for a shape and its colour for a colour in every cell (None: no word, for its sides)."""
    if n % 2 or scene["sign"]:
        raise ValueError(f"grid_words needs an even grid and a shape scene or book; got {scene['kind']!r}, n={n}.")
    per = n * n // 4
    if scene["book"]:
        book = {"shape": scene["book"]["icon"], "color": scene["background"], "position": None}
        return [book[ROLES[k % per % len(ROLES)]] for k in range(n * n)]
    cells = {(o["vertical"], o["position"]): o for o in scene["objects"]}
    words = []
    for k in range(n * n):
        o = cells.get(CELLS[k // per])
        words.append(o[ROLES[k % per % len(ROLES)]] if o else scene["background"])
    return words


def grid_caption(scene: dict, n: int = 4) -> str:
    """`grid_words` as text: the caption the `vicuna` stage puts where the image will be, with `roles`."""
    return " ".join(grid_words(scene, n))


def role_labels(scene: dict, image_size: int, patch_size: int) -> list[int]:
    """Each image token's `ROLE_WORDS` index with `roles` (`grid_words`; IGNORE where it names none)."""
    return [IGNORE if w is None else ROLE_WORDS.index(w) for w in grid_words(scene, image_size // patch_size)]


def batch(rng: random.Random, n: int, image_size: int, patch_size: int, mean, roles: bool = False) -> tuple:
    """`n` fresh scenes as (uint8 [n, 3, S, S], {attribute: labels [n, P]}), with `roles` also "role"."""
    import torch

    scenes = [random_scene(rng, "book" if rng.random() < BOOK_SHARE else "shapes", "tower.jpg") for _ in range(n)]
    labels = [patch_labels(s, image_size, patch_size) for s in scenes]
    if roles:
        for s, lab in zip(scenes, labels):
            lab["role"] = role_labels(s, image_size, patch_size)
    pixels = torch.stack([square_tensor(render(s), image_size, mean) for s in scenes])
    return pixels, {a: torch.tensor([lab[a] for lab in labels]) for a in labels[0]}


ALIGN_SCALE = 10.0  # cosine -> logit temperature of the aligned heads (CLIP learns its own; fixed here)


class Heads:
    """The vision tower with a per-patch linear head per attribute on LLaVA's feature layer, and with
    `words` ({name: token ids}) the aligned heads on the projected tokens. Calls return {head: logits},
    heads named by attribute, and `aligned_<attribute>` (with `roles`: one `aligned_role` over `ROLE_WORDS`)."""

    def __init__(self, model, words: dict[str, list[int]] | None = None, roles: bool = False):
        import torch

        self.tower = model.model.vision_tower
        self.layer = model.config.vision_feature_layer
        hidden = model.config.vision_config.hidden_size
        self.linear = {a: torch.nn.Linear(hidden, len(v) + 1) for a, v in ATTRIBUTES.items()}
        self.projector = model.model.multi_modal_projector if words else None
        if words:
            emb = model.get_input_embeddings().weight.detach()  # frozen: the words keep their meaning
            if roles:  # no learned "empty": an empty cell names its background, a word the LM knows
                self.words = {"role": torch.stack([emb[words[w]].mean(0) for w in ROLE_WORDS])}
                self.empty = None
            else:
                self.words = {a: torch.stack([emb[words[w]].mean(0) for w in v]) for a, v in ATTRIBUTES.items()}
                self.empty = torch.nn.Parameter(0.02 * torch.randn(len(ATTRIBUTES), emb.shape[1]))

    def parameters(self) -> list:
        aligned = [*self.projector.parameters(), *([self.empty] if self.empty is not None else [])] if self.projector else []
        return [*self.tower.parameters(), *(p for h in self.linear.values() for p in h.parameters()), *aligned]

    def __call__(self, pixel_values) -> dict:
        import torch
        import torch.nn.functional as F

        feats = self.tower(pixel_values, output_hidden_states=True).hidden_states[self.layer][:, 1:]  # CLS dropped
        out = {a: h(feats) for a, h in self.linear.items()}
        if self.projector is None:
            return out
        self.tokens = self.projector(feats)  # for `distance`
        tokens = F.normalize(self.tokens, dim=-1)
        for i, (a, w) in enumerate(self.words.items()):
            targets = w if self.empty is None else torch.cat([self.empty[i:i + 1], w])
            out[f"aligned_{a}"] = ALIGN_SCALE * tokens @ F.normalize(targets, dim=-1).T
        return out


    def distance(self, role: "torch.Tensor") -> "torch.Tensor":
        """With roles: the last call's tokens' squared distance to their words' embeddings, relative to a word's
        squared norm. The cosine heads leave a token's norm free (measured: 21x a word's); the language model
        reads a word's vector, so a token that is to read as "red" must be that vector, not only point its way."""
        known = role != IGNORE
        words = self.words["role"]
        return (self.tokens[known] - words[role[known]]).pow(2).sum(-1).mean() / words.pow(2).sum(-1).mean()


def train(model, *, steps: int, batch_size: int, learning_rate: float, seed: int, mean, std,
          words: dict[str, list[int]] | None = None, roles: bool = False, heldout: int = 512, logging_steps: int = 50,
          on_step=None) -> dict:
    """Train the tower (in place) and its heads (with `words`: and the projector, aligned; with `roles` too, one
    word per token); return the loss history and held-out per-patch accuracy."""
    import torch
    import torch.nn.functional as F
    from transformers import get_cosine_schedule_with_warmup

    cfg = model.config.vision_config
    heads = Heads(model, words, roles)
    model.train()
    opt = torch.optim.AdamW(heads.parameters(), lr=learning_rate, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=steps // 20, num_training_steps=steps)
    rng, history = random.Random(f"{seed}:tower"), []
    for step in range(1, steps + 1):
        px, labels = batch(rng, batch_size, cfg.image_size, cfg.patch_size, mean, roles)
        logits = heads(normalize(px, mean, std))
        loss = sum(F.cross_entropy(lg.flatten(0, 1), labels[h.removeprefix("aligned_")].flatten(), ignore_index=IGNORE)
                   for h, lg in logits.items())
        if roles and words:
            loss = loss + heads.distance(labels["role"])
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
    return {"history": history, "heldout": accuracy(heads, heldout, seed, cfg.image_size, cfg.patch_size, mean, std, roles)}


def freeze(model, projector: bool = False) -> None:
    """Freeze the tower for instruction tuning, as LLaVA-1.5 freezes CLIP; with `projector`, the aligned projector
    too (else LLaVA's stage 2 trains it on, and its tokens drift away from the words they were aligned with)."""
    model.model.vision_tower.requires_grad_(False)
    if projector:
        model.model.multi_modal_projector.requires_grad_(False)


def accuracy(heads: Heads, n: int, seed: int, image_size: int, patch_size: int, mean, std, roles: bool = False) -> dict[str, float]:
    """Per-patch accuracy on `n` fresh scenes: each head's on the patches it has a label for, and how
    often a patch without a shape is called empty by the shape heads (a tower that sees phantoms fails this one);
    the role head's on every labelled patch (its word 0, "red", is a word like the others)."""
    import torch

    if not n:
        return {}
    px, labels = batch(random.Random(f"{seed}:tower-heldout"), n, image_size, patch_size, mean, roles)
    with torch.inference_mode():
        logits = heads(normalize(px, mean, std))
    out = {"objects": int((labels["shape"] > EMPTY).sum())}
    for h, lg in logits.items():
        pred, gold = lg.argmax(-1), labels[h.removeprefix("aligned_")]
        known = gold != IGNORE if h == "aligned_role" else gold > EMPTY
        out[h] = round((pred[known] == gold[known]).float().mean().item(), 4)
        if h.endswith("shape"):
            out[h.replace("shape", "empty")] = round((pred[gold == EMPTY] == EMPTY).float().mean().item(), 4)
    return out
