"""Peak RSS of DPO + LoRA with the reference as the adapter-disabled policy (seva) vs a second full copy (SeVa).

    .venv/bin/python bench/dpo_memory.py                         # toy LLaVA + a scaled-up random LLaVA
    .venv/bin/python bench/dpo_memory.py --sizes toy --steps 4 --json out.json

Each variant runs in its own child process (same pairs, config, seed and steps); its peak resident set
comes from `os.wait4` (the child's own rusage, ru_maxrss), so variants never share a high-water mark:
    load     import + processor + pairs + one model, no trainer (the floor both variants share)
    adapter  DPOTrainer(peft_config=..., ref_model=None): reference = policy with the adapter disabled
    copy     DPOTrainer(peft_config=..., ref_model=<second from_pretrained>): SeVa's frozen full copy
The difference copy − adapter should be about one model's weights (fp32 here: 4 bytes × params).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VARIANTS = ("load", "adapter", "copy")
SIZES = {"toy": None, "scaled": {"hidden_size": 512, "layers": 8}}  # scaled: ~60M params, ~240 MB fp32


def _pairs(out: Path, n: int) -> Path:
    """n toy pairs in the filter stage's format: true answer chosen, another record's answer rejected."""
    import polars as pl

    from seva_tasks.stages import filter as filter_stage
    from seva_tasks import toy

    cfg = toy.ToyConfig()
    recs = [r for r in json.loads(toy.mix_path(cfg).read_text()) if "image" in r][:n]
    turn = lambda role, text: [{"role": role, "content": text}]  # noqa: E731
    rows = [{"images": [{"bytes": (toy.images_dir(cfg) / r["image"]).read_bytes(), "path": None}],
             "prompt": turn("user", r["conversations"][0]["value"].replace("<image>", "").strip()),
             "chosen": turn("assistant", r["conversations"][1]["value"]),
             "rejected": turn("assistant", recs[(i + 3) % n]["conversations"][1]["value"])} for i, r in enumerate(recs)]
    filter_stage._write(pl.DataFrame(rows), out / "pairs.parquet")
    return out / "pairs.parquet"


def _scaled_model(out: Path, hidden_size: int, layers: int) -> Path:
    """A random LLaVA with the toy's tokenizer/processor and a wider, deeper body, saved as the toy
    model is (llava-hf checkpoint names, `architectures`), so transformers and vLLM both load it."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from seva_tasks import toy
    from seva_tasks.llava.weights import checkpoint_names
    from seva_tasks.toy.model import llava_config

    base = toy.model_dir(toy.ToyConfig())
    proc = AutoProcessor.from_pretrained(base)
    config = llava_config(toy.ToyConfig(hidden_size=hidden_size, layers=layers), len(proc.tokenizer))
    config.architectures = ["LlavaForConditionalGeneration"]
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).float()
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    save_file(checkpoint_names(model.state_dict()), str(out / "model.safetensors"), metadata={"format": "pt"})
    proc.save_pretrained(out)
    for name in ("generation_config.json", "chat_template.jinja", "chat_template.json"):
        if (base / name).is_file() and not (out / name).is_file():
            shutil.copy2(base / name, out / name)
    return out


def child(variant: str, model: Path, pairs: Path, out: Path, steps: int) -> None:
    """One measured run (in its own process)."""
    import torch

    from seva_tasks import preference
    from seva_tasks.stages import train

    torch.set_num_threads(1)
    cfg = train.TrainConfig(precision="fp32", lora_r=8, lora_alpha=16, per_device_train_batch_size=4,
                            repeat=1, max_steps=steps, max_length=None, learning_rate=1e-3, save_steps=10_000, seed=0)
    processor = train._load_processor(cfg, model)
    ds = preference.load_pairs(pairs)
    args = train._dpo_config(cfg, out)
    args.save_strategy = "no"
    model_ = train.load_model(cfg, model)
    if variant == "load":
        return
    from trl import DPOTrainer


    ref = train.load_model(cfg, model) if variant == "copy" else None
    trainer = DPOTrainer(model=model_, ref_model=ref, args=args, train_dataset=ds, processing_class=processor,
                         data_collator=preference.PreferenceCollator(processor, cfg.conv_template, cfg.max_length),
                         peft_config=train._lora_config(cfg, model_, model))
    assert (trainer.ref_model is None) == (variant == "adapter")
    trainer.train()


def measure(variant: str, model: Path, pairs: Path, steps: int) -> dict:
    """Run one variant as a child process; its peak RSS from os.wait4 (Linux: ru_maxrss in KiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--child", variant, "--model", str(model), "--pairs", str(pairs),
                                 "--out", tmp, "--steps", str(steps)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"{variant} failed:\n{stderr.decode()[-3000:]}")
        return {"variant": variant, "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "seconds": round(time.perf_counter() - t0, 1)}


def _params(model: Path) -> int:
    """Parameter count from the safetensors headers (no weights loaded)."""
    import math

    from safetensors import safe_open

    n = 0
    for f in model.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            n += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--steps", type=int, default=3, help="DPO steps per run (batch 4 pairs)")
    p.add_argument("--pairs-n", type=int, default=16)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--pairs", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.child:
        child(ns.child, ns.model, ns.pairs, ns.out, ns.steps)
        return 0

    from seva_tasks import toy

    toy.ensure(toy.ToyConfig())
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        pairs = _pairs(Path(tmp), ns.pairs_n)
        for size in ns.sizes:
            model = toy.model_dir(toy.ToyConfig()) if SIZES[size] is None else _scaled_model(Path(tmp) / size, **SIZES[size])
            params = _params(model)
            rows = {v: measure(v, model, pairs, ns.steps) for v in VARIANTS}
            extra = rows["copy"]["peak_rss_mib"] - rows["adapter"]["peak_rss_mib"]
            results.append({"size": size, "params": params, "fp32_weights_mib": round(params * 4 / 2**20, 1),
                            "runs": list(rows.values()), "copy_minus_adapter_mib": round(extra, 1)})
            print(f"{size:<7} {params/1e6:6.2f}M params ({params*4/2**20:7.1f} MiB fp32)  " +
                  "  ".join(f"{r['variant']} {r['peak_rss_mib']:7.1f} MiB ({r['seconds']:.0f}s)" for r in rows.values()) +
                  f"   copy − adapter: {extra:+.1f} MiB", flush=True)
            if SIZES[size] is not None:
                shutil.rmtree(model, ignore_errors=True)
    if ns.json:
        ns.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
