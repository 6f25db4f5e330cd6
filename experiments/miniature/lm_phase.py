"""The language-model phase alone (the pretrain stage's `_pretrain_lm`) on the default toy world's model.

    .venv/bin/python experiments/miniature/lm_phase.py NAME STEPS LR [SCHEDULER] [toy.KEY=V ...]

Writes `runs/NAME.json`: the settings, the loss every 100 steps, and held-out text accuracy per kind
(280 questions, the caption in place of the image) next to the majority answer's. With toy overrides
(e.g. `toy.hidden_size=128 toy.layers=4`), the world goes to /tmp/miniature/world-<hash of the overrides>.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoProcessor, LlavaForConditionalGeneration  # noqa: E402

from seva_tasks import toy  # noqa: E402
from seva_tasks.stages import pretrain  # noqa: E402
from seva_tasks.toy import ToyConfig  # noqa: E402
from worlds import toy_config  # noqa: E402


def main(name: str, steps: str, lr: str, scheduler: str = "cosine", *overrides: str) -> None:
    torch.set_num_threads(1)
    toy_kw = dict(o.removeprefix("toy.").split("=", 1) for o in overrides)
    toy_cfg = toy_config(toy_kw) if toy_kw else ToyConfig()
    base = toy.model_dir(toy_cfg)
    toy.ensure(toy_cfg)
    proc = AutoProcessor.from_pretrained(base, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(base, local_files_only=True, dtype=torch.float32)
    cfg = pretrain.PretrainConfig(lm_steps=int(steps), lm_learning_rate=float(lr), lr_scheduler_type=scheduler,
                                  heldout=280, logging_steps=100)
    with tempfile.TemporaryDirectory() as tmp:
        history, stats = pretrain._pretrain_lm(cfg, model, proc, Path(tmp))
    record = {"settings": {"lm_steps": int(steps), "lm_learning_rate": float(lr), "lr_scheduler_type": scheduler,
                           "toy": toy_kw},
              "stats": stats, "metrics": [{k: r[k] for k in ("step", "loss")} for r in history if "loss" in r]}
    (Path(__file__).parent / "runs" / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(stats["heldout"]))


if __name__ == "__main__":
    main(*sys.argv[1:])
