"""Stage `tower`: vision pretraining of the toy LLaVA's tower, the toy world's CLIP.

    seva run toy-miniature --until tower                  # this stage (and the vicuna stage it reads)
    seva run toy-miniature --until pretrain pretrain.seed=1   # another base model on the same tower

Toy preset only, and off unless the config has a `tower:` section. LLaVA-1.5 starts from a released CLIP
and freezes it; the toy's tower is random, and learning to see through a one- or two-token answer loss
is slow and weak. This stage trains it on a dense, cheap objective instead (`toy.tower`): per-patch shape,
colour and place heads, and with `align` the projected tokens pointed at the language model's own (frozen)
word embeddings, CLIP's text side and LLaVA's stage-1 projector alignment in one. Only the tower and the
projector change. Its output is `pretrain`'s input model; `pretrain.freeze_tower` keeps it as trained.

Its own stage, as `vicuna` is, so that the experiment's seeds (`pretrain.seed`) instruction-tune on one
shared tower, as LLaVA's runs share one CLIP, and a change to pretrain does not pay for this stage again.

Output: `out_dir/model/` (the input model's files, the trained weights with llava-hf names) and
`metrics.jsonl`; the manifest records held-out per-patch accuracy per head (`toy.tower.accuracy`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import Field, model_validator

from seva_tasks import progress
from seva_tasks.errors import InputError
from seva_tasks.toy import fit
from seva_tasks.toy import tower as heads

log = logging.getLogger(__name__)


class TowerConfig(fit.LoopConfig):
    """Vision pretraining of the toy LLaVA's tower (`toy.tower`): steps, optimiser and what the heads predict
    (AdamW, 5% warmup then cosine, as `toy.tower.train` runs it)."""

    steps: int = Field(3000, ge=1, description="Optimizer steps (1,200: held-out per-patch shape ~0.90; 3,000: ~0.98).")
    batch_size: int = Field(64, ge=1, description="Fresh scenes per step.")
    learning_rate: float = Field(3e-3, gt=0, description="Peak AdamW learning rate (5% warmup, then cosine).")
    align: bool = Field(False, description="Also align the projected image tokens with the language model's (frozen) embeddings of the shape, colour and place words (CLIP's text side, LLaVA's stage 1); best on the vicuna stage's model.")
    roles: bool = Field(False, description="With align: one word per image token, the image read as a list (each cell's object as shape, colour, shape, side; `toy.tower.ROLES`), the words of the vicuna stage's `grid_caption`, instead of every word at once.")
    seed: int = Field(0, description="Seeds the scenes and the heads. Not an experiment seed key: every base shares the tower, as LLaVA's runs share CLIP.")
    heldout: int = Field(512, ge=0, description="Fresh scenes of the held-out per-patch check (their own seed stream).")

    @model_validator(mode="after")
    def _roles_are_aligned(self) -> "TowerConfig":
        if self.roles and not self.align:
            raise ValueError("tower.roles aligns each image token with one word; it needs tower.align: true.")
        return self


def run(cfg: TowerConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    """Train the input model's vision tower (and with `align` its projector) and publish `out_dir/model/`.

    Args:
        cfg: the stage config. inputs: {"model": the vicuna stage's model, or the toy world's}. out_dir: the store's partial dir.
    Returns:
        Manifest stats: steps, final loss, held-out per-patch accuracy per head (and the patches scored), seconds.
    """
    started = time.time()
    base = Path(inputs["model"])
    if error := fit.base_missing(base):
        raise InputError(error)
    with fit.loaded(cfg, base) as (processor, model):
        ip, tok = processor.image_processor, processor.tokenizer
        names = heads.ROLE_WORDS if cfg.roles else [w for v in heads.ATTRIBUTES.values() for w in v]
        words = {w: tok(f" {w}", add_special_tokens=False).input_ids for w in names} if cfg.align else None
        log.info("Vision pretraining: %d steps of %d scenes%s.", cfg.steps, cfg.batch_size, ", aligned" if cfg.align else "")
        stats = heads.train(model, steps=cfg.steps, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                            seed=cfg.seed, mean=ip.image_mean, std=ip.image_std, words=words, roles=cfg.roles,
                            heldout=cfg.heldout, logging_steps=cfg.logging_steps,
                            on_step=lambda i, n: progress.report("tower", i, n))
        fit.save(model.eval(), base, out_dir / "model")
    steps = fit.metrics(out_dir, stats["history"])
    accuracy = dict(stats["heldout"])
    objects = accuracy.pop("objects", 0)
    log.info("Tower trained; held-out per-patch accuracy %s → %s", accuracy, out_dir / "model")
    return {"steps": cfg.steps, "final_loss": steps[-1]["loss"] if steps else None,
            "heldout": {"accuracy": accuracy, "objects": objects, "scenes": cfg.heldout},
            "seconds": round(time.time() - started, 1)}
