"""Paired statistics of an experiment and its `verdict.json`: what the README's toy-world section quotes.

Per run (one setting, one seed), `paired(results.parquet)` compares the base and the aligned model
question by question: McNemar's discordant counts (b: base right, aligned wrong; c: the reverse) and
the standard error of the accuracy delta. Pooled over seeds, McNemar's exact two-sided test asks
whether SeVa changed which questions are answered right more often for the better than for the worse.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

HEADLINE = "pope"  # the benchmark SeVa's premise is about (noise pushes answers toward "yes")


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: P(at most min(b, c) of b + c fair coin flips) x 2, capped at 1."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def paired(results: Path) -> dict[str, dict]:
    """benchmark -> {n, b, c, delta_accuracy, se} from evaluate's results.parquet (base vs aligned)."""
    import polars as pl

    df = pl.read_parquet(results, columns=["benchmark", "model", "question_id", "correct"])
    return differences(df.filter(pl.col("model") == "base").drop("model"),
                       df.filter(pl.col("model") == "aligned").drop("model"))


def differences(first, second) -> dict[str, dict]:
    """benchmark -> {n, b, c, delta_accuracy, se}: `second`'s per-question correctness against `first`'s (frames
    of benchmark, question_id, correct) on the questions both answered; b counts those only `first` got right, c
    those only `second` did."""
    joined = first.join(second, on=["benchmark", "question_id"], suffix="_second").drop_nulls()
    out = {}
    for (name,), g in joined.group_by(["benchmark"], maintain_order=True):
        d = [int(a) - int(b) for b, a in zip(g["correct"].to_list(), g["correct_second"].to_list())]
        n = len(d)
        out[name] = {"n": n, "b": d.count(-1), "c": d.count(1), "delta_accuracy": 100 * sum(d) / max(1, n),
                     "se": 100 * statistics.stdev(d) / math.sqrt(n) if n > 1 else None}
    return out


def pooled(runs: list[dict]) -> dict[str, dict]:
    """benchmark -> {n, b, c, p, delta_accuracy, se}: one setting's paired results pooled over its seeds
    (McNemar on the summed discordant counts; the seeds' mean accuracy delta and its standard error)."""
    out = {}
    for bench in dict.fromkeys(n for r in runs for n in r.get("paired", {})):
        rows = [r["paired"][bench] for r in runs if bench in r.get("paired", {})]
        b, c = sum(x["b"] for x in rows), sum(x["c"] for x in rows)
        se = [x["se"] for x in rows if x["se"] is not None]
        out[bench] = {"n": sum(x["n"] for x in rows), "b": b, "c": c, "p": mcnemar_p(b, c),
                      "delta_accuracy": statistics.fmean(x["delta_accuracy"] for x in rows),
                      "se": math.sqrt(sum(s * s for s in se)) / len(se) if se else None}
    return out


def verdict(runs: list[dict], headline: str, controls: list[str]) -> dict:
    """The experiment's verdict: gates per seed, POPE F1 deltas, pooled McNemar, pair audit, controls, and
    the worst other benchmark's delta in standard errors (pooled over the headline setting's seeds)."""
    head = [r for r in runs if r["setting"] == headline]
    gates: dict[str, dict] = {}
    for r in head:
        for name, g in (r.get("gates") or {}).items():
            entry = gates.setdefault(name, {"value": [], "threshold": g["threshold"], "passed": True})
            entry["value"].append(g["value"])
            entry["passed"] = entry["passed"] and g["passed"]
            if "se" in g:
                entry.setdefault("se", []).append(g["se"])

    def deltas(rows: list[dict], bench: str) -> list[float]:
        return [r["benchmarks"][bench]["aligned"] - r["benchmarks"][bench]["base"] for r in rows if bench in r["benchmarks"]]

    b = sum(r.get("paired", {}).get(HEADLINE, {}).get("b", 0) for r in head)
    c = sum(r.get("paired", {}).get(HEADLINE, {}).get("c", 0) for r in head)
    worst = None
    for bench in dict.fromkeys(n for r in head for n in r.get("paired", {})):
        if bench == HEADLINE:
            continue
        d = [r["paired"][bench]["delta_accuracy"] for r in head if bench in r["paired"]]
        se = [r["paired"][bench]["se"] for r in head if bench in r["paired"] and r["paired"][bench]["se"]]
        if d and se:  # the seeds' mean delta over its standard error (independent seeds: SEs add in quadrature)
            z = statistics.fmean(d) / (math.sqrt(sum(s * s for s in se)) / len(se))
            worst = z if worst is None else min(worst, z)
    pairs = {"only_chosen_right": sum(r["pair_quality"].get("chosen_only", 0) for r in head),
             "only_rejected_right": sum(r["pair_quality"].get("rejected_only", 0) for r in head)}
    return {
        "setting": headline, "seeds": [r["seed"] for r in head], "gates": gates,
        "pope_f1_delta": deltas(head, HEADLINE), "pope_mcnemar": {"b_base_only": b, "c_aligned_only": c},
        "pope_f1_mcnemar_p": mcnemar_p(b, c),
        "auroc_delta": [r["auroc"]["aligned"] - r["auroc"]["base"] for r in head if r.get("auroc")],
        "pairs": pairs,
        "controls": {name: {"seeds": [r["seed"] for r in runs if r["setting"] == name and HEADLINE in r["benchmarks"]],
                            "pope_f1_delta": deltas([r for r in runs if r["setting"] == name], HEADLINE)}
                     for name in controls},
        "worst_other_delta_in_se": worst,
    }


def criteria(runs: list[dict], settings: list[str]) -> list[str]:
    """Markdown: every setting's own verdict on the SeVa criteria (F1 up per seed, pooled McNemar, AUROC Δ, the
    worst other benchmark), so that a sweep's settings read side by side with the headline. [] for one setting."""
    rows = []
    for name in settings:
        v = verdict([r for r in runs if r["setting"] == name], name, [])
        if not v["pope_f1_delta"]:
            continue
        up = sum(d > 0 for d in v["pope_f1_delta"])
        au = [100 * x for x in v["auroc_delta"]]
        auroc = "–" if not au else f"{statistics.fmean(au):+.2f}" + (
            f" ± {statistics.stdev(au) / math.sqrt(len(au)):.2f}" if len(au) > 1 else "")
        worst = "–" if v["worst_other_delta_in_se"] is None else f"{v['worst_other_delta_in_se']:+.2f}"
        rows.append(f"| {name} | {up} of {len(v['pope_f1_delta'])} | {v['pope_f1_mcnemar_p']:.2g} | {auroc} | {worst} |")
    if len(rows) < 2:
        return []
    return ["", "### Each setting's verdict (its own seeds; AUROC: mean ± SE over seeds)", "",
            "| Setting | POPE F1 up | McNemar p | POPE AUROC of p(yes) Δ ×100 | worst other benchmark (SE) |",
            "|---|---:|---:|---:|---:|", *rows]


def markdown(v: dict) -> list[str]:
    """verdict.json as the table's last section: the gates per seed's base model, the headline deltas per seed,
    the pooled test, the pair audit and the controls (the numbers the README's reading quotes)."""
    seeds = v["seeds"]
    if not seeds:
        return []
    cols = " | ".join(f"seed {s}" for s in seeds)
    lines = ["", f"### Verdict (`verdict.json`, setting `{v['setting']}`)", "",
             f"| | {cols} | |", "|---|" + "---:|" * len(seeds) + "---|"]
    for name, g in v["gates"].items():
        cells = [f"{x:.3f}" for x in g["value"]]
        if len(g.get("se", [])) == len(cells):  # every seed's SE (runs before session 25 have none)
            cells = [f"{c} ± {e:.3f}" for c, e in zip(cells, g["se"])]
        values = " | ".join(cells)
        lines.append(f"| gate `{name}` ({g['threshold']}) | {values} | {'passed' if g['passed'] else '**failed**'} |")

    def row(label: str, xs: list[float], note: str, at: list[int] | None = None) -> None:
        """One value per seed column ("–" for a seed the setting did not run)."""
        if xs:
            by_seed = dict(zip(at or seeds, xs))
            cells = [f"{by_seed[s]:+.2f}" if s in by_seed else "–" for s in seeds]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {note} |")

    m = v["pope_mcnemar"]
    row("POPE F1 Δ", v["pope_f1_delta"], f"McNemar p = {v['pope_f1_mcnemar_p']:.2g} "
        f"(base-only right {m['b_base_only']}, aligned-only right {m['c_aligned_only']})")
    row("POPE AUROC of p(yes) Δ ×100", [100 * x for x in v["auroc_delta"]],
        f"mean {100 * statistics.fmean(v['auroc_delta']):+.2f}" if v["auroc_delta"] else "")
    for name, c in v["controls"].items():
        row(f"control `{name}`: POPE F1 Δ", c["pope_f1_delta"], "", c.get("seeds"))
    p = v["pairs"]
    lines += ["", f"Pairs pooled over seeds: only the chosen answer right {p['only_chosen_right']}, only the rejected "
              f"{p['only_rejected_right']}. Worst other benchmark's mean Δ: "
              + ("–" if v["worst_other_delta_in_se"] is None else f"{v['worst_other_delta_in_se']:+.2f} SE") + "."]
    return lines
