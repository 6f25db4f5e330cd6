"""One probe of the miniature: build a toy world, run the vicuna (with any `vicuna.*`), tower (with any `tower.*`)
and pretrain stages on it, save the manifests' stats.

    .venv/bin/python experiments/miniature/probe.py NAME [toy.KEY=V ...] [vicuna.KEY=V ...] [tower.KEY=V ...] [pretrain.KEY=V ...] [data_dir=DIR] [until=vicuna]

Writes `experiments/miniature/runs/NAME.json` ({"overrides", "stats", "lm", "tower", "metrics"}): held-out accuracy per
kind, the gates, the tower stage (before session 12: `stats.tower`, the phase inside pretrain), and the vicuna stage's held-out text accuracy (`lm`). The world goes to
/tmp/miniature/<toy overrides> unless toy.root is given; the stages' artifacts to /tmp/miniature/data-NAME
unless data_dir is given: probes that share a data_dir (and a world) and repeat each other's vicuna settings
share one language model. `until=vicuna` stops after the text phase (its held-out text check is the record).
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
from seva_tasks.stages.tower import TowerConfig  # noqa: E402
from seva_tasks.stages.vicuna import VicunaConfig  # noqa: E402
from worlds import toy_config  # noqa: E402

RUNS = Path(__file__).parent / "runs"


def _section(overrides: dict[str, str], name: str) -> dict:
    return {k.removeprefix(f"{name}."): json.loads(v) if v[:1] in "{[" else v
            for k, v in overrides.items() if k.startswith(f"{name}.")}


def main(name: str, args: list[str]) -> None:
    overrides = dict(a.split("=", 1) for a in args)
    toy_cfg = toy_config(_section(overrides, "toy"))
    toy.ensure(toy_cfg)
    vicuna, tower = _section(overrides, "vicuna"), _section(overrides, "tower")
    cfg = PipelineConfig(data_dir=Path(overrides.get("data_dir", f"/tmp/miniature/data-{name}")), toy=toy_cfg, model=toy.model_dir(toy_cfg),
                         vicuna=VicunaConfig.model_validate(vicuna) if vicuna else None,
                         tower=TowerConfig.model_validate(tower) if tower else None,
                         pretrain=PretrainConfig.model_validate({
                             "annotations": str(toy.mix_path(toy_cfg)), "image_root": str(toy.images_dir(toy_cfg)),
                             "pope": str(toy.mix_path(toy_cfg).parent / "eval" / "pope"),
                             **_section(overrides, "pretrain")}))
    refs: dict[str, dict] = {}
    for stage in pipeline.stages_until(cfg, overrides.get("until", "pretrain")):
        refs[stage] = pipeline.run_stage(cfg, stage, refs)
    if "pretrain" not in refs:
        lm = json.loads((Path(refs["vicuna"]["path"]) / "manifest.json").read_text())["stats"]
        (RUNS / f"{name}.json").write_text(json.dumps({"overrides": overrides, "lm": lm}, indent=1) + "\n")
        print(json.dumps(lm["heldout"]["accuracy"]))
        return
    out = Path(refs["pretrain"]["path"])
    stats = {k: json.loads((Path(r["path"]) / "manifest.json").read_text())["stats"] for k, r in refs.items()}
    record = {"overrides": overrides, "stats": stats["pretrain"], "lm": stats.get("vicuna"), "tower": stats.get("tower"),
              "metrics": [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]}
    dst = RUNS / f"{name}.json"
    dst.write_text(json.dumps(record, indent=1) + "\n")
    s = record["stats"]
    print(json.dumps({"heldout": s["heldout"]["accuracy"], "gates": {k: [g["value"], g["passed"]] for k, g in (s["gates"] or {}).items()},
                      "pope": s["pope"], "lm": (record["lm"] or {}).get("heldout"), "tower": (record["tower"] or {}).get("heldout"),
                      "seconds": s["seconds"]}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
