"""Does a model read the grid caption in the format it is asked in? The vicuna stage's held-out text items (the
grid caption where the image goes) in the two formats `toy.lm` knows, for any saved model: a vicuna or an
instruction-tuned base.

    .venv/bin/python experiments/miniature/formats.py NAME MODEL_DIR [MODEL_DIR ...]

"bare" is `USER: {caption}\\n{question} ASSISTANT:` (the vicuna stage's default); "vicuna_v1" is the prompt
instruction tuning, the gates and the benchmarks use (system prompt, GQA's short-answer suffix), the caption in
`<image>`'s place. Prints and writes `runs/NAME.json`: {model dir: {format: accuracy per kind}}.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from seva_tasks.toy import lm  # noqa: E402
from seva_tasks.toy.heldout import load  # noqa: E402

RUNS = Path(__file__).parent / "runs"


def main(name: str, model_dirs: list[str]) -> None:
    record = {}
    for d in model_dirs:
        model, proc = load(Path(d) / "model")
        record[d] = {t: lm.accuracy(model, proc.tokenizer, lm.heldout(0, 280, grid=4, template=t))
                     for t in ("bare", "vicuna_v1")}
        for t, acc in record[d].items():
            print(d, t, json.dumps({k: round(v, 2) for k, v in acc.items()}), flush=True)
    (RUNS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
