"""Zero-shot transfer: does the text-trained LM read the aligned image tokens as the words they stand for?

    .venv/bin/python experiments/miniature/zeroshot.py PRETRAIN_MODEL VICUNA_MODEL

Takes a pretrain model's (frozen, aligned) tower and projector and the vicuna stage's language model, before any
instruction tuning on images, and asks the held-out image questions in the vicuna's own format (the image where
the caption was). Also prints how close the role tokens are to their words' embeddings (cosine, norm ratio,
nearest word). Needs a model trained with `tower.roles`.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlavaForConditionalGeneration

from seva_tasks.llava.images import normalize
from seva_tasks.toy import heldout as H
from seva_tasks.toy import tower


def main(pretrained: Path, vicuna: Path) -> None:
    model, proc = H.load(pretrained)
    text = LlavaForConditionalGeneration.from_pretrained(vicuna, local_files_only=True).eval()
    model.model.language_model.load_state_dict(text.model.language_model.state_dict())
    model.lm_head.load_state_dict(text.lm_head.state_dict())
    cfg, ip = model.config.vision_config, proc.image_processor
    px, labels = tower.batch(random.Random("0:tower-heldout"), 256, cfg.image_size, cfg.patch_size, ip.image_mean, roles=True)
    with torch.inference_mode():
        feats = model.model.vision_tower(normalize(px, ip.image_mean, ip.image_std), output_hidden_states=True)
        tokens = model.model.multi_modal_projector(feats.hidden_states[model.config.vision_feature_layer][:, 1:])
    ids = [proc.tokenizer(f" {w}", add_special_tokens=False).input_ids[0] for w in tower.ROLE_WORDS]
    words = model.get_input_embeddings().weight.detach()[ids]
    known = labels["role"] != tower.IGNORE
    t, g = tokens[known], words[labels["role"][known]]
    nearest = (t[:, None] - words[None]).norm(dim=-1).argmin(-1) == labels["role"][known]
    print(f"cosine {F.cosine_similarity(t, g).mean():.3f}, norm ratio {(t.norm(dim=-1) / g.norm(dim=-1)).mean():.2f}, "
          f"nearest word right {nearest.float().mean():.3f}")
    items = [it for it in H.heldout(0, 320) if it["kind"] != "genre"]  # a genre is not in the caption
    answers = H.ask(model, proc, items, max_new_tokens=6, template=vicuna_prompt)
    print("zero-shot held-out accuracy", H.accuracy(model, proc, items, answers))


def vicuna_prompt(question: str) -> str:
    """The vicuna stage's format (`toy.lm.segments`), the image where the caption was."""
    return f"USER: <image>\n{question.removesuffix(chr(10) + H.SHORT_ANSWER)} ASSISTANT:"


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
