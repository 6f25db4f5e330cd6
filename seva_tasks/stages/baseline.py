"""Stage `baseline`: the base model's answers and scores on the benchmarks -> `answers/`, `scores/`, `metrics.json`.

    seva run --until baseline                          # the model (pretrain on the toy) and this
    seva run --until baseline evaluate.benchmarks=[pope,mme]

It reads the `evaluate:` section, so the base model is asked exactly as `evaluate` asks the aligned
one (seva_tasks/benchmarks/protocol.py), and its inputs are only the model and the benchmark files:
after any change to sampling, augmentation, generation, filtering or training it stays cached, and
`evaluate` compares against it without asking the base model again.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from seva_tasks import benchmarks as B
from seva_tasks.benchmarks import protocol
from seva_tasks.benchmarks.protocol import EvaluateConfig, fingerprint  # noqa: F401  (its external inputs: the benchmark files)
from seva_tasks.fingerprint import fingerprint as fingerprint_path  # not `fingerprint`: that one is the stage hook

METRICS = "metrics.json"
log = logging.getLogger(__name__)


def run(cfg: EvaluateConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    """Answer and score every configured benchmark with the base model.

    Args:
        cfg: the `evaluate:` section. inputs: {"model": the base model dir}. out_dir: the store's partial dir.
    Returns:
        Manifest stats: model, headline metric per benchmark, answer counts, judge, seconds.
    """
    t0 = time.perf_counter()
    model = Path(inputs["model"])
    results = protocol.evaluate_model(cfg, model, out_dir, label="base", judge_base=model)
    # the model by content (its path, which holds upstream keys, is in the manifest): a copy publishes the same bytes
    (out_dir / METRICS).write_text(json.dumps({"model": fingerprint_path(model), "benchmarks": results}, indent=1))
    headline = {n: r["metrics"].get(B.get(n).HEADLINE) for n, r in results.items()}
    for name, value in headline.items():
        log.info("Base model on %s: %s %s", name, B.get(name).HEADLINE, value)
    return {"model": str(model), "headline": headline, "answers": {n: r["answers"] for n, r in results.items()},
            "judge": protocol.judge_of(results),
            "seconds": round(time.perf_counter() - t0, 3)}
