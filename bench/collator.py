"""P7: building DPO batches, seva's `PreferenceCollator` vs TRL's `DataCollatorForVisionPreference`.

Same rows on both sides: toy pairs (image, question, chosen, rejected answers) in batches of 16, as
the train stage feeds DPOTrainer. seva's collator renders LLaVA's preprocess_v1 string per side and
tokenizes it whole, twice (once for the loss mask with offsets, once in the processor with the
images); TRL's renders the checkpoint's chat template and tokenizes prompt and answers separately.
Interleaved in this process after a warm-up; wall time by perf_counter. What it answers: does the
exact training sequence cost anything next to the image preprocessing both sides share?
"""

from __future__ import annotations

import copy
import io
import json
import sys
import time
from pathlib import Path


def rows(n: int) -> list[dict]:
    """n toy pairs: a mix question with its image, the true answer chosen, another row's answer rejected."""
    from PIL import Image

    from seva_tasks import toy

    cfg = toy.ToyConfig()
    toy.ensure(cfg)
    recs = [r for r in json.loads(toy.mix_path(cfg).read_text()) if "image" in r]
    out = []
    for i in range(n):
        r, other = recs[i % len(recs)], recs[(i + 7) % len(recs)]
        image = Image.open(io.BytesIO((toy.images_dir(cfg) / r["image"]).read_bytes())).convert("RGB")
        out.append({"images": [image], "prompt": [{"role": "user", "content": r["conversations"][0]["value"].replace("<image>", "").strip()}],
                    "chosen": [{"role": "assistant", "content": r["conversations"][1]["value"]}],
                    "rejected": [{"role": "assistant", "content": other["conversations"][1]["value"]}]})
    return out


def bench(work: Path, *, n: int, runs: int, batch: int = 16) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).parent))
    from common import row, summary
    from transformers import AutoProcessor
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from seva_tasks import toy
    from seva_tasks.preference import PreferenceCollator

    processor = AutoProcessor.from_pretrained(toy.model_dir(toy.ToyConfig()))
    data = rows(n)
    batches = [data[i:i + batch] for i in range(0, n, batch)]
    sides = {"seva": PreferenceCollator(processor, "vicuna_v1"), "trl": DataCollatorForVisionPreference(processor)}
    times: dict[str, list[float]] = {k: [] for k in sides}
    for b in batches[:1]:  # warm-up
        for collate in sides.values():
            collate(copy.deepcopy(b))  # TRL's collator rewrites its examples in place
    for _ in range(runs):
        for name, collate in sides.items():
            inputs = [copy.deepcopy(b) for b in batches]
            t0 = time.perf_counter()
            for b in inputs:
                collate(b)
            times[name].append(time.perf_counter() - t0)
    rate = lambda ts: summary([n / t for t in ts], 1)  # noqa: E731
    return [row("P7", f"DPO batches of {batch} pairs from {n} toy pairs (pairs/s)", "pairs/s", rate(times["seva"]), rate(times["trl"]),
                seva_label="PreferenceCollator (preprocess_v1, whole-string)", anchor_label="TRL DataCollatorForVisionPreference",
                target=("ratio>=", 0.5), better="higher",
                note="both include the processor's image preprocessing; seva tokenizes each side twice (offsets for the loss mask, then with the images)")]
