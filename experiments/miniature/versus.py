"""Two settings of one experiment against each other, paired per question on each seed's base (session 18).

    .venv/bin/python experiments/miniature/versus.py miniature-controls seva shuffled

The experiment's own tables pair each setting with its base; this pairs setting A's aligned answers with
setting B's on the same questions (same base, same pairs up to the control), per benchmark: A's accuracy minus
B's (points, the seeds' mean ± SE) and an exact McNemar test on the discordant questions pooled over the seeds.
It answers "does A add anything to B", e.g. SeVa's image-noise contrast over shuffled pairing. Reads
`experiments/NAME/runs.jsonl` and each run's evaluate `results.parquet` from the store.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import polars as pl

from seva_tasks.config import ROOT
from seva_tasks.verdict import mcnemar_p


def aligned(run: dict) -> pl.DataFrame:
    path = ROOT / "data" / "artifacts" / "evaluate" / run["keys"]["evaluate"] / "results.parquet"
    df = pl.read_parquet(path, columns=["benchmark", "model", "question_id", "correct"])
    return df.filter(pl.col("model") == "aligned").drop("model")


def versus(name: str, a: str, b: str) -> str:
    runs = [json.loads(line) for line in (ROOT / "experiments" / name / "runs.jsonl").read_text().splitlines()]
    by = {(r["setting"], r["seed"]): r for r in runs}
    seeds = sorted(s for (setting, s) in by if setting == a and (b, s) in by)
    per: dict[str, list[tuple[int, int, float, float]]] = {}
    for seed in seeds:
        j = aligned(by[(a, seed)]).join(aligned(by[(b, seed)]), on=["benchmark", "question_id"], suffix="_b")
        for (bench,), g in j.group_by(["benchmark"], maintain_order=True):
            d = [int(x) - int(y) for x, y in zip(g["correct"].to_list(), g["correct_b"].to_list())]
            se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0
            per.setdefault(bench, []).append((d.count(1), d.count(-1), 100 * sum(d) / len(d), 100 * se))
    lines = [f"{a} vs {b} ({name}, seeds {', '.join(map(str, seeds))}): accuracy Δ ({a} − {b}) per seed, mean ± SE, "
             "McNemar p pooled", "", f"| Benchmark | {' | '.join(f'seed {s}' for s in seeds)} | mean ± SE | only {a} right | only {b} right | p |",
             "|---|" + "---:|" * (len(seeds) + 4)]
    for bench, rows in per.items():
        wins, losses = sum(r[0] for r in rows), sum(r[1] for r in rows)
        mean = statistics.fmean(r[2] for r in rows)
        se = math.sqrt(sum(r[3] ** 2 for r in rows)) / len(rows)
        cells = " | ".join(f"{r[2]:+.2f}" for r in rows)
        lines.append(f"| {bench} | {cells} | {mean:+.2f} ± {se:.2f} | {wins} | {losses} | {mcnemar_p(wins, losses):.2g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(versus(*sys.argv[1:]))
