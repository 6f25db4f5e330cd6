"""Which small language model learns the toy's binding and lettered choice in text? A sweep bed.

    .venv/bin/python experiments/miniature/bind.py NAME STEPS LR LAYERS WIDTH HEADS [EVAL_EVERY] [HEAD_DIM] [SEED] [CHOICE_SHARE] [LOOKUP_SHARE]

The vicuna stage's data (`toy.lm.conversations`: the caption where the image will be, one question) on a
fresh Llama of the given shape with the default world's tokenizer, trained by a plain AdamW loop
(50 warmup steps, cosine, clip 1.0, batch 32) instead of the HF Trainer: the same batches and loss
(`toy.fit.collator`, `toy.fit.loss`), fast to sweep.
Every EVAL_EVERY steps, held-out text accuracy per kind (`toy.lm.heldout`, 280 questions) as the
vicuna stage measures it. HEAD_DIM (default WIDTH / HEADS) decouples the heads from the width, as
Llama's `head_dim` allows: vLLM's CPU attention takes head_dim 32 but not 16. SEED (default 0) sets the
weights and the training draws; the held-out questions stay seed 0's. CHOICE_SHARE (the vicuna
stage's `choice_share`, default `lm.CHOICE_SHARE`; 0.2 before session 8) is the share of training conversations that ask a
lettered choice, LOOKUP_SHARE (its `lookup_share`, default `lm.LOOKUP_SHARE`; 0 before) the share whose lettered
question names its answer. Writes `runs/NAME.json`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from seva_tasks import toy  # noqa: E402
from seva_tasks.stages.vicuna import VicunaConfig  # noqa: E402
from seva_tasks.toy import ToyConfig, fit, lm  # noqa: E402


def main(name: str, steps: str, lr: str, layers: str, width: str, heads: str, every: str = "1000",
         head_dim: str = "", seed: str = "0", choice_share: str = "", lookup_share: str = "") -> None:
    torch.set_num_threads(1)
    seed = int(seed)
    shares = VicunaConfig(**{k: float(v) for k, v in (("choice_share", choice_share), ("lookup_share", lookup_share)) if v})
    torch.manual_seed(seed)
    steps, lr, layers, width, heads, every = int(steps), float(lr), int(layers), int(width), int(heads), int(every)
    head_dim = int(head_dim) if head_dim else width // heads
    cfg = ToyConfig()
    toy.ensure(cfg)
    tok = AutoTokenizer.from_pretrained(toy.model_dir(cfg), local_files_only=True)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, head_dim=head_dim, vocab_size=len(tok), max_position_embeddings=512, initializer_range=0.02,
        bos_token_id=1, eos_token_id=2, pad_token_id=tok.pad_token_id, tie_word_embeddings=False))
    bs = 32
    collate = fit.collator(tok.pad_token_id, mean=(0, 0, 0), std=(1, 1, 1))  # the vicuna stage's batches (no pixels)
    data = lm.examples(tok, seed, steps * bs, choice_share=shares.choice_share, lookup_share=shares.lookup_share)
    held = lm.heldout(0, 280)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, s / 50) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    record = {"settings": {"steps": steps, "lr": lr, "layers": layers, "width": width, "heads": heads,
                           "head_dim": head_dim, "seed": seed,
                           "choice_share": shares.choice_share, "lookup_share": shares.lookup_share},
              "evals": [], "losses": []}
    t0 = time.time()
    for step in range(1, steps + 1):
        batch = collate(data[(step - 1) * bs:step * bs])
        model.train()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    logits_to_keep=batch["logits_to_keep"])
        loss = fit.loss(out, batch["labels"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0:
            record["losses"].append([step, round(loss.item(), 4)])
        if step % every == 0 or step == steps:
            acc = lm.accuracy(model.eval(), tok, held)
            record["evals"].append({"step": step, "seconds": round(time.time() - t0), **acc})
            print(json.dumps(record["evals"][-1]), flush=True)
            (Path(__file__).parent / "runs" / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
