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
import sys

import polars as pl

from seva_tasks.config import ROOT
from seva_tasks.verdict import differences, pooled


def aligned(run: dict) -> pl.DataFrame:
    path = ROOT / "data" / "artifacts" / "evaluate" / run["keys"]["evaluate"] / "results.parquet"
    df = pl.read_parquet(path, columns=["benchmark", "model", "question_id", "correct"])
    return df.filter(pl.col("model") == "aligned").drop("model")


def versus(name: str, a: str, b: str) -> str:
    runs = [json.loads(line) for line in (ROOT / "experiments" / name / "runs.jsonl").read_text().splitlines()]
    by = {(r["setting"], r["seed"]): r for r in runs}
    seeds = sorted(s for (setting, s) in by if setting == a and (b, s) in by)
    per_seed = [{"paired": differences(aligned(by[(b, s)]), aligned(by[(a, s)]))} for s in seeds]  # c: only A right
    lines = [f"{a} vs {b} ({name}, seeds {', '.join(map(str, seeds))}): accuracy Δ ({a} − {b}) per seed, mean ± SE, "
             "McNemar p pooled", "", f"| Benchmark | {' | '.join(f'seed {s}' for s in seeds)} | mean ± SE | only {a} right | only {b} right | p |",
             "|---|" + "---:|" * (len(seeds) + 4)]
    for bench, t in pooled(per_seed).items():
        cells = " | ".join(f"{r['paired'][bench]['delta_accuracy']:+.2f}" for r in per_seed)
        lines.append(f"| {bench} | {cells} | {t['delta_accuracy']:+.2f} ± {t['se']:.2f} | {t['c']} | {t['b']} | {t['p']:.2g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(versus(*sys.argv[1:]))
