"""The contract between stages: the files a stage publishes that a later stage reads.

A stage reads its inputs only through these names (and `manifest.json`), never through another
stage's module, so stages stay siblings that can change independently.
"""

from __future__ import annotations

import json
from pathlib import Path

UNLABELED = "unlabeled.parquet"  # sample: id, record_id, subset, image, question, turn
AUGMENTED = "augmented.parquet"  # augment: + augmentation, mode, noise_step, aug_seed, aug_image
GENERATIONS = "generations.parquet"  # generate: + prompt, chosen, rejected, finish reasons, tokens
PAIRS = "pairs.parquet"  # filter: TRL's vision preference format (images, prompt, chosen, rejected)
MODEL = "model"  # pretrain: the instruction-tuned model directory
MERGED = "merged"  # train: the base model with the LoRA adapter merged in (what vLLM serves)


def image_root(artifact: Path) -> Path | None:
    """The absolute root the `image` column is relative to, as a sample/augment/generate manifest records it."""
    stats = json.loads((Path(artifact) / "manifest.json").read_text()).get("stats", {})
    return Path(stats["image_root"]) if stats.get("image_root") else None
