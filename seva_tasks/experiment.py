"""Base vs SeVa-aligned over seeds and settings: the plan, the table and the plots (no Prefect here).

    make experiment                       # configs/experiments/miniature.yaml -> experiments/miniature-seva/
    seva experiment configs/experiments/toy-seva.yaml

An experiment is a preset, seeds, and named settings (dotted overrides). Each (setting, seed) is one
run of the `seva` flow (flows/experiment.py), so every stage is cached as usual: a second invocation
costs nothing, and settings that share a prefix of the chain share its artifacts. A seed sets every
`seed_keys` field (by default sample, augment and train: the base model is the same pretrained model in
every run; add pretrain.seed, as miniature.yaml does, for a base per seed); each delta is paired on its base.

Outputs, written as one directory swap: `runs.jsonl` (one line per run: setting, seed, stage keys,
pairs kept, base and aligned headline metrics), `summary.json`, `table.md`, `plots/seeds.png` (base vs
aligned with seed spread, first setting) and `plots/sweep.png` (delta per setting and benchmark).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from seva_tasks import pipeline, verdict
from seva_tasks.base import resolve
from seva_tasks.benchmarks.report import NAMES
from seva_tasks.config import load_config
from seva_tasks.errors import ConfigError, InputError
from seva_tasks.stages.sample import reference_answers


class Setting(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Short name used in the table and plots.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted overrides on top of the preset.")
    seeds: list[int] | None = Field(None, description="Seeds for this setting; None: the experiment's.")
    why: str = Field("", description="What the setting tests (shown in the table).")
    control: bool = Field(False, description="A control (e.g. swapped pairs): reported in verdict.json's `controls`, not as a result.")


class ExperimentConfig(BaseModel):
    """An experiment: one preset, seeds, settings. Args: see each field's description."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str = Field("toy", description="Preset name or YAML path (configs/).")
    out: Path = Field(Path("experiments/toy-seva"), description="Output directory (relative to the project root).")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Seeds of every setting that names none.")
    seed_keys: list[str] = Field(["sample.seed", "augment.seed", "train.seed"], description="Fields a seed sets (add pretrain.seed so that each seed has its own base model).")
    require_gates: bool = Field(True, description="Refuse to run SeVa on a base model whose pretrain manifest fails a gate (toy world, DESIGN §5).")
    workers: int = Field(1, ge=1, description="Runs at once, each in its own process with its share of the cores (`share_cores`: 2 on 2 cores, one thread each); the stages that runs share (a seed's base model, its pairs) are built once.")
    settings: list[Setting] = Field(min_length=1, description="The first is the headline; the rest are the sweep.")

    def runs(self) -> list[tuple[str, int, dict[str, Any]]]:
        """(setting, seed, overrides) for every run, each checked against the config schema up front."""
        plan = []
        for s in self.settings:
            for seed in s.seeds or self.seeds:
                overrides = {**{k: seed for k in self.seed_keys}, **s.overrides}
                load_config(self.preset, overrides)  # fail before hours of work, naming the bad key
                plan.append((s.name, seed, overrides))
        return plan


THREADS = "OMP_NUM_THREADS"


def share_cores(workers: int) -> int | None:
    """In one of `workers` concurrent runs' processes: its share of the CPUs, as torch's threads here and as
    OMP_NUM_THREADS for the processes it starts (vLLM workers); returns that share, or None if left alone.

    Otherwise every run takes every core: DPO's torch threads and a vLLM worker's beside another run's spin on the
    same cores (measured on 2 cores: an evaluate stage 58 s alone, 111-159 s beside another run). A thread count the
    user set (OMP_NUM_THREADS) is kept."""
    if workers < 2 or THREADS in os.environ:
        return None
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS: no affinity
    n = max(1, cpus // workers)
    os.environ[THREADS] = str(n)
    torch.set_num_threads(n)
    return n


def load(path: str | Path) -> ExperimentConfig:
    p = resolve(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such experiment file (see configs/experiments/).")
    try:
        return ExperimentConfig.model_validate(yaml.safe_load(p.read_text()) or {})
    except (yaml.YAMLError, ValueError) as e:
        raise ConfigError(f"{p}: {e}") from e


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def _right(answer: str, reference: str) -> bool:
    """The answer is the reference, or starts with it as whole words ("No, ..." for "No")."""
    a, r = _norm(answer), _norm(reference)
    return bool(r) and (a == r or a.startswith(r + " "))


COUNTS = ("pairs", "with_reference", "chosen_right", "rejected_right", "chosen_only", "rejected_only")


def pair_audit(pairs: Path, annotations: Path) -> dict[str, dict[str, int]]:
    """How often the chosen (clean-image) and rejected (noised) answers match the mix's own answer, per kind of
    question: `yes/no` where the mix answers yes or no (POPE's form), else the row's subset.

    SeVa's premise is that chosen beats rejected; `chosen_only` counts the pairs where it visibly
    does (chosen right, rejected wrong), `rejected_only` the reverse.
    """
    import polars as pl

    has_subset = "subset" in pl.read_parquet_schema(pairs)
    df = pl.read_parquet(pairs, columns=["id", "chosen", "rejected", *(["subset"] if has_subset else [])])  # not the images
    refs = reference_answers(annotations, set(df["id"].to_list()))
    subsets = df["subset"].to_list() if has_subset else ["all"] * df.height
    out: dict[str, dict[str, int]] = {}
    for row, subset in zip(df.select("id", "chosen", "rejected").iter_rows(named=True), subsets):
        ref = refs.get(row["id"])
        q = out.setdefault("yes/no" if ref is not None and _norm(ref) in ("yes", "no") else subset, dict.fromkeys(COUNTS, 0))
        q["pairs"] += 1
        if ref is None:
            continue
        c, r = _right(row["chosen"][-1]["content"], ref), _right(row["rejected"][-1]["content"], ref)
        q["with_reference"] += 1
        q["chosen_right"] += c
        q["rejected_right"] += r
        q["chosen_only"] += c and not r
        q["rejected_only"] += r and not c
    return out


def pair_quality(audit: dict[str, dict[str, int]]) -> dict[str, int]:
    """The audit's counts summed over its kinds."""
    return {k: sum(q[k] for q in audit.values()) for k in COUNTS}


def gates(refs: dict[str, dict]) -> dict[str, dict]:
    """The base model's gates, from the pretrain stage's manifest ({} without a pretrain stage)."""
    if "pretrain" not in refs:
        return {}
    return json.loads((Path(refs["pretrain"]["path"]) / "manifest.json").read_text())["stats"].get("gates") or {}


def check_gates(setting: str, seed: int, refs: dict[str, dict]) -> None:
    """Raise, naming every failed gate, if the run's base model fails the miniature's gates."""
    failed = {k: g for k, g in gates(refs).items() if not g["passed"]}
    if failed:
        listing = "; ".join(f"{k} = {g['value']} (needs {g['threshold']})" for k, g in failed.items())
        raise InputError(f"{setting} seed {seed}: the base model ({refs['pretrain']['path']}) fails the toy world's "
                         f"gates: {listing}. SeVa on it would measure nothing (DESIGN §5): retune the toy world or "
                         "pretrain, or set require_gates: false in the experiment file to run anyway.")


def collect(exp: ExperimentConfig, setting: str, seed: int, overrides: dict, refs: dict[str, dict]) -> dict:
    """One run's line of runs.jsonl, from the flow's stage references (with rounds: the last round's)."""
    cfg = load_config(exp.preset, overrides)
    last = {name: refs[pipeline.node(name, cfg.rounds)] for name in ("filter", "train", "evaluate")}
    metrics = json.loads((Path(last["evaluate"]["path"]) / "metrics.json").read_text())
    kept = json.loads((Path(last["filter"]["path"]) / "manifest.json").read_text())["stats"]["counts"]["kept"]
    audit = pair_audit(Path(last["filter"]["path"]) / "pairs.parquet", cfg.sample.annotations)
    bench = {}
    for name, e in metrics["benchmarks"].items():
        h = e["headline"]
        base, aligned = e.get("base", {}).get(h), e.get("aligned", {}).get(h)
        if base is not None and aligned is not None:
            bench[name] = {"metric": h, "base": base, "aligned": aligned}
    pope = metrics["benchmarks"].get("pope", {})
    splits = {m: {k: v for k, v in pope.get(m, {}).items() if "/" in k} for m in ("base", "aligned") if m in pope}
    line = {"setting": setting, "seed": seed, "overrides": overrides, "pairs": kept,
            "pair_quality": pair_quality(audit), "pair_audit": audit,
            "pope_splits": splits,
            "keys": {name: ref["key"] for name, ref in refs.items()}, "benchmarks": bench, "gates": gates(refs),
            "paired": verdict.paired(Path(last["evaluate"]["path"]) / "results.parquet")}
    if "auroc" in pope.get("base", {}) and "auroc" in pope.get("aligned", {}):  # evaluate.engine.logprobs > 0
        line["auroc"] = {m: pope[m]["auroc"] / 100 for m in ("base", "aligned")}
    return line


def _stats(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else None, "n": len(xs)}


def summarize(runs: list[dict]) -> dict:
    """setting -> {pairs, benchmarks: name -> {metric, base, aligned, delta: {mean, std (sample), n}}}."""
    out: dict[str, dict] = {}
    for setting in dict.fromkeys(r["setting"] for r in runs):
        mine = [r for r in runs if r["setting"] == setting]
        bench = {}
        for name in dict.fromkeys(n for r in mine for n in r["benchmarks"]):
            rows = [r["benchmarks"][name] for r in mine if name in r["benchmarks"]]
            bench[name] = {"metric": rows[0]["metric"], "base": _stats([x["base"] for x in rows]),
                           "aligned": _stats([x["aligned"] for x in rows]),
                           "delta": _stats([x["aligned"] - x["base"] for x in rows])}
        quality = {k: _stats([r["pair_quality"][k] for r in mine]) for k in mine[0].get("pair_quality", {})}
        splits = {m: {k: statistics.fmean(r["pope_splits"][m][k] for r in mine) for k in mine[0]["pope_splits"][m]}
                  for m in mine[0].get("pope_splits", {}) if all(m in r.get("pope_splits", {}) for r in mine)}
        audit: dict[str, dict[str, int]] = {}
        for r in mine:
            for kind, q in r.get("pair_audit", {}).items():
                audit[kind] = {k: audit.get(kind, {}).get(k, 0) + q[k] for k in COUNTS}
        out[setting] = {"seeds": [r["seed"] for r in mine], "pairs": _stats([r["pairs"] for r in mine]),
                        "pope_splits": splits, "pair_audit": audit,
                        "pair_quality": quality, "benchmarks": bench, "paired": verdict.pooled(mine)}
    return out


def _pm(s: dict, signed: bool = False) -> str:
    mean = f"{s['mean']:+.2f}" if signed else f"{s['mean']:.2f}"
    return mean if s["std"] is None else f"{mean} ± {s['std']:.2f}"


def table(exp: ExperimentConfig, summary: dict, verdict_: dict | None = None, runs: list[dict] = ()) -> str:
    """Markdown: the headline setting per benchmark, then the sweep's deltas, the paired tests, the pair audit and
    (given) the verdict; with `runs`, each setting's own verdict beside the others."""
    head, *sweep = exp.settings
    s = summary[head.name]
    lines = [f"### {head.name}: {len(s['seeds'])} seeds ({', '.join(map(str, s['seeds']))}), "
             f"{_pm(s['pairs'])} pairs kept", "",
             "| Benchmark | Metric | Base | Aligned | Δ (aligned − base) |", "|---|---|---:|---:|---:|"]
    for name, b in s["benchmarks"].items():
        lines.append(f"| {NAMES.get(name, name)} | {b['metric']} | {_pm(b['base'])} | {_pm(b['aligned'])} | "
                     f"{_pm(b['delta'], signed=True)} |")
    if sweep:
        names = list(s["benchmarks"])
        lines += ["", "### Sweep: Δ (aligned − base) per setting, mean ± std over seeds", "",
                  "| Setting | Seeds | Pairs | " + " | ".join(NAMES.get(n, n) for n in names) + " |",
                  "|---|---:|---:|" + "---:|" * len(names)]
        legend = []
        for st in exp.settings:
            if st.name not in summary:
                continue
            row = summary[st.name]
            cells = " | ".join(_pm(row["benchmarks"][n]["delta"], signed=True) if n in row["benchmarks"] else "–"
                               for n in names)
            lines.append(f"| {st.name} | {len(row['seeds'])} | {_pm(row['pairs'])} | {cells} |")
            over = ", ".join(f"`{k}={json.dumps(v, separators=(',', ':'))}`" for k, v in st.overrides.items())
            legend.append(f"- **{st.name}**: {st.why or 'no description'} ({over or 'the preset as is'})")
        lines += ["", *legend]
    lines += _paired_table(exp, summary)
    lines += verdict.criteria(runs, [st.name for st in exp.settings])
    quality = [(st.name, summary[st.name]["pair_quality"]) for st in exp.settings
               if summary.get(st.name, {}).get("pair_quality")]
    if quality:
        lines += ["", "### Are the chosen answers the right ones? (vs the mix's own answers; mean per seed)", "",
                  "| Setting | Pairs | chosen right | rejected right | only chosen right | only rejected right |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, q in quality:
            cells = " | ".join(f"{q[k]['mean']:.1f}" for k in ("chosen_right", "rejected_right", "chosen_only",
                                                                "rejected_only"))
            lines.append(f"| {name} | {q['pairs']['mean']:.1f} | {cells} |")
    if audit := summary[head.name].get("pair_audit"):
        lines += ["", f"### {head.name}: the pair audit by kind of question (summed over seeds)", "",
                  "| Kind | Pairs | chosen right | rejected right | only chosen right | only rejected right |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {kind} | " + " | ".join(str(q[k]) for k in COUNTS if k != "with_reference") + " |"
                  for kind, q in sorted(audit.items())]
    lines += _pope_splits(summary[head.name])
    lines += verdict.markdown(verdict_) if verdict_ else []
    return "\n".join(lines) + "\n"


def _pope_splits(s: dict) -> list[str]:
    """The headline's POPE per split, base → aligned (mean over seeds): a shifted prior moves the yes-ratio and
    trades precision for recall; better grounding raises both."""
    base, aligned = s.get("pope_splits", {}).get("base"), s.get("pope_splits", {}).get("aligned")
    if not base or not aligned:
        return []
    lines = ["", "### POPE per split, base → aligned (mean over seeds)", "",
             "| Split | precision | recall | F1 | yes-ratio |", "|---|---:|---:|---:|---:|"]
    for split in dict.fromkeys(k.split("/")[0] for k in base):
        cells = " | ".join(f"{base[f'{split}/{m}']:.2f} → {aligned[f'{split}/{m}']:.2f}"
                           for m in ("precision", "recall", "f1", "yes_ratio"))
        lines.append(f"| {split} | {cells} |")
    return lines


def _paired_table(exp: ExperimentConfig, summary: dict) -> list[str]:
    """Per setting and benchmark: per-question accuracy Δ (points) ± SE and McNemar's p, pooled over seeds."""
    rows = [(st.name, summary[st.name]["paired"]) for st in exp.settings if summary.get(st.name, {}).get("paired")]
    if not rows:
        return []
    names = list(dict.fromkeys(n for _, p in rows for n in p))
    lines = ["", "### Paired per question: accuracy Δ (points) ± SE, McNemar p (exact, pooled over seeds)", "",
             "| Setting | " + " | ".join(NAMES.get(n, n) for n in names) + " |", "|---|" + "---:|" * len(names)]
    for name, p in rows:
        cells = [f"{p[n]['delta_accuracy']:+.2f} ± {p[n]['se'] or 0:.2f} (p={p[n]['p']:.2g})" if n in p else "–"
                 for n in names]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _plot_seeds(summary: dict, setting: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bench = summary[setting]["benchmarks"]
    names = list(bench)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names)), 3.6))
    width = 0.38
    for i, (label, color) in enumerate((("base", "#9aa5b1"), ("aligned", "#2f6fb0"))):
        # MME is a sum of subtask scores (0-2000): plotted on its own scale would flatten the rest.
        means = [bench[n][label]["mean"] / (20 if n == "mme" else 1) for n in names]
        errs = [(bench[n][label]["std"] or 0.0) / (20 if n == "mme" else 1) for n in names]
        ax.bar([x + (i - 0.5) * width for x in range(len(names))], means, width, yerr=errs, capsize=3,
               color=color, label=label)
    ax.set_xticks(range(len(names)), [NAMES.get(n, n) + (" /20" if n == "mme" else "") for n in names],
                  fontsize=8, rotation=20)
    ax.set_ylabel("headline metric (mean ± std over seeds)")
    ax.set_title(f"{setting}: base vs SeVa-aligned, seeds {summary[setting]['seeds']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_sweep(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(summary)
    names = list(dict.fromkeys(n for s in summary.values() for n in s["benchmarks"]))
    grid = [[summary[s]["benchmarks"].get(n, {}).get("delta", {}).get("mean", float("nan")) for n in names]
            for s in settings]
    top = max([abs(v) for row in grid for v in row if v == v] + [1.0])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 * len(names)), 0.5 * len(settings) + 1.6))
    im = ax.imshow(grid, cmap="RdBu", vmin=-top, vmax=top, aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, "–" if v != v else f"{v:+.1f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(names)), [NAMES.get(n, n) for n in names], fontsize=8, rotation=20)
    ax.set_yticks(range(len(settings)), [f"{s} (n={len(summary[s]['seeds'])})" for s in settings], fontsize=8)
    ax.set_title("Δ aligned − base (mean over seeds)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(exp: ExperimentConfig, runs: list[dict]) -> Path:
    """runs.jsonl, summary.json, table.md and plots/ into exp.out, replaced as a whole."""
    out = resolve(exp.out)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "plots").mkdir(parents=True)
    summary = summarize(runs)
    (tmp / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    (tmp / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    controls = [s.name for s in exp.settings if s.control]
    v = verdict.verdict(runs, exp.settings[0].name, controls)
    (tmp / "verdict.json").write_text(json.dumps(v, indent=1))
    head = exp.settings[0].name
    if head in summary:
        (tmp / "table.md").write_text(table(exp, summary, v, runs))
        _plot_seeds(summary, head, tmp / "plots" / "seeds.png")
    else:  # with workers, a control's run can finish before any of the headline's
        (tmp / "table.md").write_text(f"### {head}: no run finished yet\n")
    _plot_sweep(summary, tmp / "plots" / "sweep.png")
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out
