"""Stage `evaluate`: the aligned model against the baseline on the LLaVA-1.5 benchmarks -> `results.parquet`,
`metrics.json`, `report.md` and `plots/`.

    seva run --until evaluate
    seva run --until evaluate evaluate.benchmarks=[pope,mme] evaluate.judge_mode=off

The aligned model (train's `merged/`) is asked and scored by seva_tasks/benchmarks/protocol.py into
this artifact's `answers/` and `scores/`; the base model's come from the `baseline` stage, which the
same `evaluate:` settings produced, so after a training change only the aligned model is asked.

In round r >= 2 (`evaluate[r2]`…) the input `previous` is round r-1's evaluate artifact: its rounds'
scores and rows are carried over, labelled `round 1`…`round r-1`, so the last round's report shows
base and every round side by side (`plots/rounds.png`) without asking an earlier model again.
"aligned" is always this round's model.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from seva_tasks import benchmarks as B
from seva_tasks.artifacts import MERGED, PAIRS
from seva_tasks.benchmarks import protocol
from seva_tasks.benchmarks.protocol import EvaluateConfig, fingerprint  # noqa: F401  (its external inputs: the benchmark files)
from seva_tasks.fingerprint import fingerprint as fingerprint_path  # not `fingerprint`: that one is the stage hook
from seva_tasks.errors import InputError

RESULTS, METRICS = "results.parquet", "metrics.json"
log = logging.getLogger(__name__)


def _base(baseline_dir: Path, names: list[str]) -> dict[str, dict]:
    """The base model's scores per benchmark, from the baseline artifact."""
    missing = [n for n in names if not (baseline_dir / "scores" / f"{n}.json").is_file()]
    if missing:
        raise InputError(f"{baseline_dir}: no baseline scores for {', '.join(missing)}. Rerun `seva run --until evaluate`.")
    return {n: json.loads((baseline_dir / "scores" / f"{n}.json").read_text()) for n in names}


def _previous(previous: Path | None) -> tuple[dict, list[dict], dict]:
    """Earlier rounds from round r-1's evaluate: ({round: {benchmark: metrics}}, result rows, {round: model})."""
    if previous is None:
        return {}, [], {}
    import polars as pl

    metrics = json.loads((previous / METRICS).read_text())
    # Round 1's evaluate has no `rounds`: its own model ("aligned") is round 1. A later one lists every round, its own last.
    rounds = {int(r): m for r, m in (metrics.get("rounds") or {}).items()} or {
        1: {n: e["aligned"] for n, e in metrics["benchmarks"].items() if "aligned" in e}}
    models = {int(r): m for r, m in (metrics["models"].get("rounds") or {}).items()} or {1: metrics["models"]["aligned"]}
    last = max(rounds)
    df = pl.read_parquet(previous / RESULTS).filter(pl.col("model") != "base")
    df = df.with_columns(pl.when(pl.col("model") == "aligned").then(pl.lit(f"round {last}"))
                         .otherwise(pl.col("model")).alias("model"))
    return rounds, df.to_dicts(), models


def _collect(scores: dict[str, dict[str, dict]]) -> tuple[list[dict], dict]:
    """results rows (benchmark, model, per question) and metrics.json's `benchmarks` section."""
    rows, bench = [], {}
    for label, per in scores.items():
        for name, data in per.items():
            rows += [{"benchmark": name, "model": label, **r} for r in data["rows"]]
            entry = bench.setdefault(name, {"headline": B.get(name).HEADLINE})
            entry[label] = data["metrics"]
            entry.setdefault("judge", data.get("judge"))
    for entry in bench.values():
        h = entry["headline"]
        base, aligned = entry.get("base", {}).get(h), entry.get("aligned", {}).get(h)
        if base is not None and aligned is not None:  # None: nothing could be judged
            entry["delta"] = aligned - base
    return rows, bench


def _write_results(rows: list[dict], path: Path) -> None:
    import polars as pl

    schema = {"benchmark": pl.String, "model": pl.String, "question_id": pl.String, "category": pl.String,
              "answer": pl.String, "parsed": pl.String, "correct": pl.Boolean, "score": pl.Float64}
    pl.DataFrame(rows, schema=schema).write_parquet(path, compression="zstd")


def run(cfg: EvaluateConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    """Ask and score the aligned model, compare with the baseline; write results.parquet, metrics.json, report.md, plots/.

    Args:
        cfg: the stage config. inputs: {"model": the base model (the report names it; the local judge
            serves it unless evaluate.judge_model), "filter": pairs artifact (answer lengths for the report),
            "train": train artifact (merged/), "baseline": the base model's scores, and in round r >= 2
            "previous": round r-1's evaluate}. out_dir: the store's resumable partial dir.
    Returns:
        Manifest stats: headline metric per benchmark and model, answer counts, judge, seconds.
    """
    from seva_tasks.benchmarks.report import write_report

    t0 = time.perf_counter()
    base_model, aligned = Path(inputs["model"]), Path(inputs["train"]) / MERGED
    base_scores = _base(Path(inputs["baseline"]), protocol.benchmarks(cfg))
    results = protocol.evaluate_model(cfg, aligned, out_dir, label="aligned", judge_base=base_model)
    aligned_scores = {n: json.loads((out_dir / "scores" / f"{n}.json").read_text()) for n in results}
    rows, bench = _collect({"base": base_scores, "aligned": aligned_scores})
    rounds, earlier_rows, round_models = _previous(inputs.get("previous"))
    _write_results(rows + earlier_rows, out_dir / RESULTS)
    judge = protocol.judge_of(results)
    # models by content, as generate names them (their paths hold upstream keys; the manifests have them)
    names = {"base": fingerprint_path(base_model), "aligned": fingerprint_path(aligned)}
    metrics = {"models": names, "judge": judge, "benchmarks": bench,
               "answers": {"aligned": {n: r["answers"] for n, r in results.items()}}}
    if rounds:  # this round is the next one; every round's metrics, this one's included
        this = max(rounds) + 1
        rounds[this] = {n: e["aligned"] for n, e in bench.items() if "aligned" in e}
        metrics["rounds"] = {str(r): m for r, m in sorted(rounds.items())}
        metrics["models"]["rounds"] = {str(r): m for r, m in sorted({**round_models, this: names["aligned"]}.items())}
    (out_dir / METRICS).write_text(json.dumps(metrics, indent=1))
    write_report(out_dir, metrics, Path(inputs["filter"]) / PAIRS)
    for name, e in bench.items():
        log.info("%s %s: base %s → aligned %s (delta %s)", name, e["headline"], e.get("base", {}).get(e["headline"]),
                 e.get("aligned", {}).get(e["headline"]), e.get("delta"))
    per_round = {r: {n: m[n].get(bench[n]["headline"]) for n in m} for r, m in metrics.get("rounds", {}).items()}
    return {"headline": {n: {lb: e[lb].get(e["headline"]) for lb in ("base", "aligned") if lb in e} for n, e in bench.items()},
            **({"rounds": per_round} if per_round else {}),
            "answers": metrics["answers"], "judge": judge, "rows": len(rows),
            "seconds": round(time.perf_counter() - t0, 3)}
