"""p("yes") on POPE: does a model ground its answers better, or did only its prior move?

A change in POPE F1 can come from a shifted yes/no prior alone. The AUROC of p("yes") over the
questions (positive: the object is there) does not move with the prior, only with how well the
answer separates present from absent objects. `yes_probabilities` reads it off one forward pass per
question with transformers: p(yes) / (p(yes) + p(no)) for the first answer token, prompts and images
as the benchmark's engine gets them (vicuna_v1, padded to square).
"""

from __future__ import annotations

from pathlib import Path

from seva_tasks.benchmarks import pope
from seva_tasks.verdict import auroc


def yes_probabilities(model_dir: Path, pope_dir: Path, batch: int = 32) -> tuple[list[float], list[bool]]:
    """(p(yes) per question, whether the object is present), over every split of the POPE files."""
    import torch
    from PIL import Image

    from seva_tasks.llava.images import pad_and_resize
    from seva_tasks.toy.heldout import load
    from seva_tasks.toy.model import prompt

    questions = pope.load(pope_dir)
    labels = pope._labels(pope_dir, questions)
    model, proc = load(model_dir)
    tok = proc.tokenizer
    tok.padding_side = "left"
    yes, no = (tok.encode(w, add_special_tokens=False)[0] for w in ("yes", "no"))
    size, mean = model.config.vision_config.image_size, proc.image_processor.image_mean
    scores: list[float] = []
    for i in range(0, len(questions), batch):
        chunk = questions[i:i + batch]
        images = []
        for q in chunk:
            with Image.open(q.image) as im:
                images.append(pad_and_resize(im.convert("RGB"), size, mean))
        enc = proc(images=images, text=[prompt(q.text) for q in chunk], padding=True, return_tensors="pt")
        with torch.inference_mode():
            logits = model(**enc).logits[:, -1, [yes, no]].float()
        scores += torch.softmax(logits, dim=-1)[:, 0].tolist()
    return scores, [labels[id(q)] == "yes" for q in questions]


def pope_auroc(model_dir: Path, pope_dir: Path) -> float | None:
    """AUROC of p(yes) for the object being present, over POPE's three splits."""
    return auroc(*yes_probabilities(model_dir, pope_dir))
