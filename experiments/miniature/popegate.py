"""The POPE gate's question sets on saved base models (session 17): the held-out shapes-only set the pretrain stage
asked until session 16 (300 questions, a third of the negatives adversarial) against the world's POPE benchmark
that it asks now (three splits, POPE's scoring), with the benchmark's errors by scene kind.

    .venv/bin/python experiments/miniature/popegate.py NAME PRETRAIN_DIR [PRETRAIN_DIR ...]

Prints and writes `runs/NAME.json`: {dir: {"heldout_set": POPE metrics, "benchmark": POPE metrics (split means),
"by_kind": {scene kind: {label: [right, wrong]}}}}. Benchmark images 1..bench_shapes are shape scenes, then signs,
then books (`toy.benchmarks.draw`); `--shapes N` gives bench_shapes (the preset's 520).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from seva_tasks.benchmarks import pope as pope_bench  # noqa: E402
from seva_tasks.toy import gates  # noqa: E402
from seva_tasks.toy.heldout import ask, heldout, load  # noqa: E402

RUNS = Path(__file__).parent / "runs"


def measure(pretrain_dir: Path, shapes: int) -> dict:
    manifest = json.loads((pretrain_dir / "manifest.json").read_text())
    seed, root = manifest["config"]["seed"], Path(manifest["config"]["annotations"]).parent / "eval" / "pope"
    model, proc = load(pretrain_dir / "model")
    old = heldout(seed, 300, kinds=("pope",), stream="pretrain-gates")  # the stage's set until session 16
    labels = [it["answer"] for it in old]
    split = pope_bench.split_metrics([pope_bench.yes_no(a) for a in ask(model, proc, old)], labels)
    scored = gates.ask_pope(model, proc, root)
    image = {str(q.question_id): q.image for q in pope_bench.load(root)}
    by_kind: dict[str, dict[str, list[int]]] = {}
    for r in scored.rows:
        index = int(Path(image[r["question_id"]]).stem.rsplit("_", 1)[1]) - 1
        kind = "shapes" if index < shapes else "sign"  # books have no objects, so no POPE question
        gold = r["parsed"] if r["correct"] else {"yes": "no", "no": "yes"}[r["parsed"]]
        by_kind.setdefault(kind, {}).setdefault(gold, [0, 0])[0 if r["correct"] else 1] += 1
    return {"heldout_set": {k: round(v / 100, 4) for k, v in split.items()}, "benchmark": gates.pope(scored.metrics),
            "by_kind": by_kind, "seed": seed}


def main(name: str, args: list[str]) -> None:
    shapes = int(args.pop(args.index("--shapes") + 1)) if "--shapes" in args else 520
    args = [a for a in args if a != "--shapes"]
    record = {}
    for d in args:
        record[d] = measure(Path(d), shapes)
        print(d, json.dumps(record[d]), flush=True)
    (RUNS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
