"""Print this log's table rows from probe outputs, so that no number in the log is typed by hand.

    python experiments/miniature/table.py f1 "families 0.8" f2 "families 0.9" ...

    python experiments/miniature/table.py --sweep experiments/miniature-sweep

    python experiments/miniature/table.py --popegate pg-v1     # a popegate.py record: the POPE gate's two sets

Columns: clean all / shape / colour / exists / side / choice / genre | POPE yes / F1 | noised POPE yes / F1 |
noised all (drop) | tower shape | gates passed | minutes.
A `bind.py` run (text only) gives one row per evaluation instead: step | all / shape / colour / count / side /
exists / pope / choice | minutes; a `formats.py` record one row per model and format; a text-only probe
(`probe.py ... until=vicuna`, `runs/t*.json`) one row of the same kinds. The tower column is the aligned shape
head's per-patch accuracy, or with roles the role head's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from seva_tasks.verdict import verdict

RUNS = Path(__file__).parent / "runs"
KINDS = ("all", "shape", "color", "exists", "side", "choice", "genre")


def bind_rows(name: str, change: str, evals: list[dict]) -> str:
    kinds = ("all", "shape", "color", "count", "side", "exists", "pope", "choice")
    return "\n".join(f"| {name} | {change} | {e['step']} | {' / '.join(f'{e[k]:.2f}' for k in kinds)} | "
                     f"{e['seconds'] / 60:.0f} |" for e in evals)


def format_rows(record: dict) -> str:
    """A `formats.py` record: one row per model and format (model | format | kinds as `bind_rows`)."""
    kinds = ("all", "shape", "color", "count", "side", "exists", "pope", "choice")
    return "\n".join(f"| {Path(model).parent.name}/{Path(model).name[:6]} | {fmt} | {' / '.join(f'{acc[k]:.2f}' for k in kinds)} |"
                     for model, by_format in record.items() for fmt, acc in by_format.items())


def row(name: str, change: str) -> str:
    record = json.loads((RUNS / f"{name}.json").read_text())
    if all(isinstance(v, dict) and "bare" in v for v in record.values()):
        return format_rows(record)
    if "evals" in record:
        return bind_rows(name, change, record["evals"])
    if "stats" not in record:  # text only
        acc = record["lm"]["heldout"]["accuracy"]
        kinds = ("all", "shape", "color", "count", "side", "exists", "pope", "choice")
        return f"| {name} | {change} | {' / '.join(f'{acc[k]:.2f}' for k in kinds)} | {record['lm']['seconds'] / 60:.0f} |"
    s = record["stats"]
    acc, noised, pope = s["heldout"]["accuracy"], s["heldout"]["noised"], s["pope"]
    clean = " / ".join(f"{acc[k]:.3f}" if k == "all" else f"{acc[k]:.2f}" for k in KINDS)
    gates = f"{sum(g['passed'] for g in s['gates'].values())} of {len(s['gates'])}"
    tower = record["tower"]["heldout"]["accuracy"] if record.get("tower") else s["tower"]["heldout"]  # its own stage from session 12
    aligned = tower.get("aligned_shape", tower.get("aligned_role"))
    return (f"| {name} | {change} | {clean} | {pope['clean']['yes_ratio']:.2f} / {pope['clean']['f1']:.2f} | "
            f"{pope['noised']['yes_ratio']:.2f} / {pope['noised']['f1']:.2f} | {noised['all']:.3f} "
            f"({s['gates']['noise_drop']['value']:.2f}) | {aligned:.2f} | {gates} | "
            f"{s['seconds']['total'] / 60:.0f} |")


def sweep(out: Path) -> str:
    """An experiment's settings side by side from its runs.jsonl: POPE F1 Δ per seed, the POPE yes-ratio after
    (mean of the splits), the AUROC of p(yes) Δ ×100 per seed and their mean, paired POPE and MME accuracy Δ ± SE
    pooled over seeds (summary.json), and as `verdict.json` would give them with the setting as the headline: the
    pooled McNemar p and the worst other benchmark's Δ in SEs."""
    runs = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    lines = ["| setting | POPE F1 Δ per seed | yes-ratio after | AUROC Δ ×100 (mean) | paired POPE | paired MME | McNemar p | worst other |",
             "|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["setting"] for r in runs):
        mine = sorted((r for r in runs if r["setting"] == name), key=lambda r: r["seed"])
        f1 = " / ".join(f"{r['benchmarks']['pope']['aligned'] - r['benchmarks']['pope']['base']:+.2f}" for r in mine)
        yes = " / ".join(f"{sum(v for k, v in r['pope_splits']['aligned'].items() if k.endswith('/yes_ratio')) / 3:.1f}"
                         for r in mine)
        auroc = " / ".join(f"{100 * (r['auroc']['aligned'] - r['auroc']['base']):+.2f}" if r.get("auroc") else "–" for r in mine)
        v = verdict(runs, name, [])  # the criteria with this setting as the headline
        if v["auroc_delta"]:
            auroc += f" ({100 * sum(v['auroc_delta']) / len(v['auroc_delta']):+.2f})"
        paired = summary[name].get("paired", {})
        cells = [f"{paired[b]['delta_accuracy']:+.2f} ± {paired[b]['se']:.2f}" if b in paired else "–" for b in ("pope", "mme")]
        worst = "–" if v["worst_other_delta_in_se"] is None else f"{v['worst_other_delta_in_se']:+.1f} SE"
        lines.append(f"| {name} | {f1} | {yes} | {auroc} | {' | '.join(cells)} | {v['pope_f1_mcnemar_p']:.1e} | {worst} |")
    return "\n".join(lines)


def popegate(name: str) -> str:
    """A `popegate.py` record: per base, the old held-out set's POPE and the world's, with its errors by scene kind."""
    def wrong(counts: dict, label: str) -> str:
        return f"{counts[label][1]}/{sum(counts[label])}"

    def f1(counts: dict) -> float:  # pooled over the splits: 2 TP / (2 TP + FP + FN)
        tp, fn, fp = counts["yes"][0], counts["yes"][1], counts["no"][1]
        return 2 * tp / (2 * tp + fp + fn)

    lines = ["| base (seed) | held-out set: yes / F1 | world's POPE: yes / precision / recall / F1 | shape scenes: absent "
             "said yes / present missed (F1) | sign scenes: absent said yes / present missed |", "|---|---|---|---|---|"]
    for d, m in json.loads((RUNS / f"{name}.json").read_text()).items():
        h, b, k = m["heldout_set"], m["benchmark"], m["by_kind"]
        lines.append(f"| {Path(d).parent.name}/{Path(d).name[:6]} ({m['seed']}) | {h['yes_ratio']:.2f} / {h['f1']:.3f} | "
                     f"{b['yes_ratio']:.3f} / {b['precision']:.3f} / {b['recall']:.3f} / {b['f1']:.4f} | "
                     f"{wrong(k['shapes'], 'no')} / {wrong(k['shapes'], 'yes')} ({f1(k['shapes']):.3f}) | {wrong(k['sign'], 'no')} / {wrong(k['sign'], 'yes')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--sweep"]:
        print(sweep(Path(args[1])))
    elif args[:1] == ["--popegate"]:
        print(popegate(args[1]))
    else:
        print("\n".join(row(n, c) for n, c in zip(args[::2], args[1::2])))
