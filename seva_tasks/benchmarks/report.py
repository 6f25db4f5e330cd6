"""The evaluate stage's report: `report.md` with the base-vs-aligned table, and two PNG plots.

    plots/benchmarks.png   one panel per benchmark: base and aligned headline metric, delta in the title
    plots/lengths.png      chosen vs rejected answer lengths of the preference pairs (SeVa paper, Fig. 5)
    plots/rounds.png       with rounds: each benchmark's headline metric from base (round 0) through every round

report.md references the PNGs relatively (for people reading the file); the flow publishes it as a
Prefect markdown artifact with the PNGs embedded as data URIs (flows/glue.py), since the UI cannot
resolve a relative path.
"""

from __future__ import annotations

from pathlib import Path

NAMES = {"pope": "POPE", "mme": "MME", "gqa": "GQA", "textvqa": "TextVQA", "sqa": "SQA-IMG", "seed": "SEED-IMG",
         "mmbench": "MMBench", "vizwiz": "VizWiz (val)", "mmvet": "MM-Vet", "llava_bench": "LLaVA-Bench"}
COUNTS = ("missing", "unmatched", "unparsed", "judge_failures")


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _table(bench: dict) -> list[str]:
    lines = ["| Benchmark | Metric | Base | Aligned | Δ |", "|---|---|---:|---:|---:|"]
    for name, e in bench.items():
        h = e["headline"]
        base, aligned = e.get("base", {}).get(h), e.get("aligned", {}).get(h)
        delta = f"{e['delta']:+.2f}" if "delta" in e else "–"
        lines.append(f"| {NAMES.get(name, name)} | {h} | {_fmt(base)} | {_fmt(aligned)} | {delta} |")
    return lines


def _rounds_table(bench: dict, rounds: dict[str, dict]) -> list[str]:
    """Base, then one column per round; Δ is the last round minus base."""
    head = " | ".join(f"Round {r}" for r in rounds)
    lines = [f"| Benchmark | Metric | Base | {head} | Δ (last − base) |", "|---|---|---:|" + "---:|" * (len(rounds) + 1)]
    for name, e in bench.items():
        h = e["headline"]
        cells = " | ".join(_fmt(m.get(name, {}).get(h)) for m in rounds.values())
        delta = f"{e['delta']:+.2f}" if "delta" in e else "–"
        lines.append(f"| {NAMES.get(name, name)} | {h} | {_fmt(e.get('base', {}).get(h))} | {cells} | {delta} |")
    return lines


def _plot_rounds(bench: dict, rounds: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(bench)
    cols = min(5, max(1, len(names)))
    rows = -(-len(names) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    xs = [0, *map(int, rounds)]
    for ax, name in zip(axes.flat, names):
        h = bench[name]["headline"]
        ys = [bench[name].get("base", {}).get(h), *(m.get(name, {}).get(h) for m in rounds.values())]
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        ax.axis("on")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color="#2f6fb0")
        ax.set_xticks(xs, ["base", *map(str, rounds)], fontsize=8)
        ax.set_title(f"{NAMES.get(name, name)}\n{h}", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _counts(bench: dict) -> list[str]:
    """Answers that could not count as right: missing, unmatched, unparsable, judge failures."""
    lines = ["| Benchmark | Model | " + " | ".join(COUNTS) + " |", "|---|---|" + "---:|" * len(COUNTS)]
    for name, e in bench.items():
        for label in ("base", "aligned"):
            if label in e:
                cells = " | ".join(str(int(e[label].get(c) or 0)) for c in COUNTS)
                lines.append(f"| {NAMES.get(name, name)} | {label} | {cells} |")
    return lines + _not_asked(bench)


def _not_asked(bench: dict) -> list[str]:
    """Questions outside a benchmark's scored set (ScienceQA's text-only ones): not failures, so said apart."""
    notes = []
    for name, e in bench.items():
        n = next((e[lb]["text_only"] for lb in ("base", "aligned") if (e.get(lb) or {}).get("text_only")), 0)
        if n:
            notes.append(f"{NAMES.get(name, name)}: the set also has {int(n)} text-only question(s); "
                         f"{NAMES.get(name, name)} scores image questions only, so they are not asked and not "
                         "counted as missing (`all/accuracy` in metrics.json counts them as wrong).")
    return ["", *notes] if notes else []


def _plot_benchmarks(bench: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, e in bench.items() if "base" in e or "aligned" in e]
    cols = min(5, max(1, len(names)))
    rows = -(-len(names) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        e, h = bench[name], bench[name]["headline"]
        raw = [e.get(lb, {}).get(h) for lb in ("base", "aligned")]  # None: not scored / nothing judged
        vals = [v or 0.0 for v in raw]
        ax.axis("on")
        bars = ax.bar(["base", "aligned"], vals, color=["#9aa5b1", "#2f6fb0"])
        ax.bar_label(bars, labels=["n/a" if v is None else f"{v:.1f}" for v in raw], fontsize=8)
        ax.set_ylim(0, max(vals + [1.0]) * 1.2)
        title = f"{NAMES.get(name, name)}\n{h}" + (f" ({e['delta']:+.2f})" if "delta" in e else "")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_lengths(chosen: list[int], rejected: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    top = max(chosen + rejected + [1])
    bins = list(range(0, top + max(1, top // 30) + 1, max(1, top // 30)))
    ax.hist(chosen, bins=bins, alpha=0.6, label=f"chosen (clean image), mean {sum(chosen) / len(chosen):.1f}")
    ax.hist(rejected, bins=bins, alpha=0.6, label=f"rejected (augmented), mean {sum(rejected) / len(rejected):.1f}")
    ax.set_xlabel("answer length (tokens)")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _lengths(pairs: Path) -> tuple[list[int], list[int]] | None:
    if not pairs.is_file():
        return None
    import polars as pl

    df = pl.read_parquet(pairs, columns=["chosen_tokens", "rejected_tokens"])
    return (df["chosen_tokens"].to_list(), df["rejected_tokens"].to_list()) if df.height else None


def write_report(out_dir: Path, metrics: dict, pairs: Path) -> Path:
    """report.md + plots/ in out_dir from metrics.json's content and the filter stage's pairs."""
    bench = metrics["benchmarks"]
    (out_dir / "plots").mkdir(exist_ok=True)
    _plot_benchmarks(bench, out_dir / "plots" / "benchmarks.png")
    judge = metrics.get("judge") or next((e["judge"] for e in bench.values() if e.get("judge")), None)
    who = (f"`{judge['model']}` ({judge.get('model_version') or 'no version given'}), {judge['runs']} run(s), "
           f"served as {', '.join(judge.get('served_model') or ['?'])}") if judge else "none used"
    md = ["# SeVa evaluation: base vs aligned", "",
          f"Base model: `{metrics['models']['base']}`  ", f"Aligned model: `{metrics['models']['aligned']}`  ",
          f"Judge (MM-Vet, LLaVA-Bench, MMBench fallback): {who}. Judged scores are comparable only under "
          "the same judge.", "", *_table(bench), "", "![Base vs aligned per benchmark](plots/benchmarks.png)", ""]
    if rounds := metrics.get("rounds"):
        _plot_rounds(bench, rounds, out_dir / "plots" / "rounds.png")
        md += [f"## Rounds: base and each of {len(rounds)} rounds (round r starts from round r-1's model)", "",
               *(f"Round {r}: `{m}`  " for r, m in metrics["models"].get("rounds", {}).items()), "",
               *_rounds_table(bench, rounds), "", "![Headline metric per round](plots/rounds.png)", ""]
    md += ["## Answers that could not count", "", *_counts(bench), ""]
    lengths = _lengths(pairs)
    if lengths:
        _plot_lengths(*lengths, out_dir / "plots" / "lengths.png")
        c, r = lengths
        md += ["## Preference pairs: answer lengths (paper Fig. 5)", "",
               f"{len(c):,} pairs; chosen answers average {sum(c) / len(c):.1f} tokens, rejected "
               f"{sum(r) / len(r):.1f}.", "", "![Chosen vs rejected answer lengths](plots/lengths.png)", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path
