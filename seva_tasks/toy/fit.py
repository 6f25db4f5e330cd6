"""Training plumbing of the toy's two training stages (`vicuna`, `pretrain`): batches, the answer-only
loss, transformers' `Trainer`, and a model directory saved with llava-hf names.

`fit(cfg, ...)` reads `FitConfig`'s optimiser settings, which both stage configs inherit, and each
stage's own `steps` and `seed`.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import Field

from seva_tasks import progress
from seva_tasks.base import StageConfig


class LoopConfig(StageConfig):
    """What every toy training stage's loop reads (the tower's, and `FitConfig`'s Trainer stages); each stage adds
    its own `steps` and `seed` (`loaded` seeds from it)."""

    threads: int = Field(1, ge=1, description="torch CPU threads. One where runs share the cores (an experiment's workers); the miniature's vicuna and tower, which run alone, step 1.7x faster on two (bench P10). Part of the key: the thread count changes float rounding, so the bytes.")
    logging_steps: int = Field(50, ge=1, description="Write a metrics.jsonl line every this many steps.")


class FitConfig(LoopConfig):
    """The optimiser settings of the toy's Trainer stages (each adds its own `steps`, `seed` and data)."""

    batch_size: int = Field(32, ge=1, description="Conversations per step.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak AdamW learning rate (on every weight that gets a gradient).")
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field("cosine", description="transformers scheduler name.")
    warmup_steps: int = Field(50, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")


def base_missing(base: Path) -> str | None:
    """The error for a base model directory a training stage cannot start from, or None."""
    if (base / "config.json").is_file():
        return None
    return (f"Base model not found: {base} has no config.json. Build the toy world "
            "(python -m seva_tasks.toy) or point `model:` at it, e.g. model=data/toy/model.")


@contextmanager
def loaded(cfg: LoopConfig, base: Path):
    """(processor, float32 model) of `base`, seeded by `cfg.seed`, with torch on `cfg.threads` threads
    until the block ends (the caller's count restored)."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration, set_seed

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        processor = AutoProcessor.from_pretrained(base, local_files_only=True)
        set_seed(cfg.seed)
        yield processor, LlavaForConditionalGeneration.from_pretrained(base, local_files_only=True, dtype=torch.float32)
    finally:
        torch.set_num_threads(threads)


def collator(pad_id: int, mean, std):
    """Right-padded batch; pixel values only for the rows that have an image (LLaVA splices them in order).

    `logits_to_keep` marks the positions that predict an answer token, so the LM head and the loss
    run on those alone (~15% of positions); `labels` are their targets, flattened in the same order.
    """
    import torch

    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

    def collate(batch: list[dict]) -> dict:
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), pad_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, e in enumerate(batch):
            n = len(e["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
        keep = torch.zeros((len(batch), width), dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != -100
        out = {"input_ids": ids, "attention_mask": mask, "logits_to_keep": keep, "labels": labels[:, 1:][keep[:, :-1]]}
        px = [e["pixels"] for e in batch if e["pixels"] is not None]
        if px:
            out["pixel_values"] = (torch.stack(px).float() / 255 - m) / s
        return out

    return collate


def loss(outputs, labels, num_items_in_batch=None):
    """Mean cross-entropy over the answer tokens (logits come flattened: one row per kept position)."""
    import torch.nn.functional as F

    return F.cross_entropy(outputs.logits.float(), labels)


def fit(cfg: FitConfig, model, examples: list[dict], processor, out_dir: Path, phase: str, desc: str,
        callbacks: tuple = ()) -> list[dict]:
    """transformers.Trainer on every weight that gets a gradient; returns the log history, each entry
    tagged with `phase` (its name in metrics.jsonl). `desc` names the progress bar; `callbacks` are more
    `TrainerCallback`s."""
    from transformers import Trainer, TrainingArguments

    ip = processor.image_processor
    args = TrainingArguments(
        output_dir=str(out_dir / ".trainer"), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, seed=cfg.seed, data_seed=cfg.seed, logging_steps=cfg.logging_steps,
        save_strategy="no", report_to="none", use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=examples,
                      data_collator=collator(processor.tokenizer.pad_token_id, ip.image_mean, ip.image_std),
                      compute_loss_func=loss, callbacks=[progress.trainer_callback(desc), *callbacks])
    trainer.train()
    shutil.rmtree(out_dir / ".trainer", ignore_errors=True)
    return [{"phase": phase, **r} for r in trainer.state.log_history]


def save(model, base: Path, dst: Path) -> None:
    """The base directory's files (config, processor, tokenizer, chat template) + the trained weights."""
    from safetensors.torch import save_file

    from seva_tasks.llava.weights import checkpoint_names

    dst.mkdir(parents=True)
    for p in sorted(base.iterdir()):
        if p.is_file() and not p.name.endswith(".safetensors") and p.name != "model.safetensors.index.json":
            shutil.copy2(p, dst / p.name)
    state = checkpoint_names(model.float().state_dict())  # llava-hf names: vLLM 0.32 needs vision_model.
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})


def metrics(out_dir: Path, history: list[dict]) -> list[dict]:
    """Write `metrics.jsonl` (one line per logging step: phase, step, loss, lr, grad norm); returns its rows."""
    import json

    steps = [{k: r[k] for k in ("phase", "step", "loss", "learning_rate", "grad_norm") if k in r} for r in history if "loss" in r]
    with open(out_dir / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in steps)
    return steps
