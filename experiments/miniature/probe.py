"""One probe of the miniature: build a toy world, run the pretrain stage on it, save the manifest's stats.

    .venv/bin/python experiments/miniature/probe.py NAME [toy.KEY=V ...] [pretrain.KEY=V ...]

Writes `experiments/miniature/runs/NAME.json` ({"overrides", "stats", "metrics"}): held-out accuracy per
kind, the gates, the language-model and tower phases. The world goes to /tmp/miniature/<toy overrides>
unless toy.root is given; the stage's artifacts to /tmp/miniature/data-NAME.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from seva_tasks import pipeline, toy  # noqa: E402
from seva_tasks.config import PipelineConfig  # noqa: E402
from seva_tasks.stages.pretrain import PretrainConfig  # noqa: E402
from worlds import toy_config  # noqa: E402


def main(name: str, args: list[str]) -> None:
    overrides = dict(a.split("=", 1) for a in args)
    toy_kw = {k.removeprefix("toy."): v for k, v in overrides.items() if k.startswith("toy.")}
    pre_kw = {k.removeprefix("pretrain."): json.loads(v) if v[:1] in "{[" else v
              for k, v in overrides.items() if k.startswith("pretrain.")}
    toy_cfg = toy_config(toy_kw)
    toy.ensure(toy_cfg)
    cfg = PipelineConfig(data_dir=Path(f"/tmp/miniature/data-{name}"), toy=toy_cfg, model=toy.model_dir(toy_cfg),
                         pretrain=PretrainConfig.model_validate({
                             "annotations": str(toy.mix_path(toy_cfg)), "image_root": str(toy.images_dir(toy_cfg)), **pre_kw}))
    ref = pipeline.run_stage(cfg, "pretrain", {})
    out = Path(ref["path"])
    record = {"overrides": overrides, "stats": json.loads((out / "manifest.json").read_text())["stats"],
              "metrics": [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]}
    dst = Path(__file__).parent / "runs" / f"{name}.json"
    dst.write_text(json.dumps(record, indent=1) + "\n")
    s = record["stats"]
    print(json.dumps({"heldout": s["heldout"]["accuracy"], "gates": {k: [g["value"], g["passed"]] for k, g in (s["gates"] or {}).items()},
                      "pope": s["pope"], "lm": (s.get("lm") or {}).get("heldout"), "tower": (s.get("tower") or {}).get("heldout"),
                      "seconds": s["seconds"]}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
