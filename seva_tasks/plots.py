"""Pictures for the Prefect UI: training curves, and markdown whose images travel inside it (no Prefect here).

    embed(report_md, out_dir)            # ![..](plots/x.png) -> ![..](data:image/png;base64,...)
    train_curves(rows) / pretrain_curves(rows, heldout)   -> PNG bytes, or None with nothing to draw

The UI renders a markdown artifact's `![alt](data:image/png;base64,…)` but cannot resolve a relative
path: `![…](plots/benchmarks.png)` shows as a broken image (`naturalWidth` 0, measured in Chromium on
Prefect 3.8.8's UI). So everything seva publishes goes through `embed`; the files on disk keep their
relative references for people reading them. The curves are drawn for the UI only: a stage's artifact
dir is content-addressed and already published (immutable) when the flow shows it, so they are not
written into the store.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

# ![alt](target) with the target up to the closing parenthesis (seva's targets hold no spaces or parentheses).
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
EMBEDDED = ("data:", "http://", "https://")
DPI = 100  # a 9-inch-wide figure is ~900 px: fits the UI's artifact page without scaling text to nothing


def relative_images(markdown: str) -> list[str]:
    """Image targets the UI cannot resolve: neither a data URI nor an absolute URL."""
    return [target for _, target in IMAGE.findall(markdown) if not target.startswith(EMBEDDED)]


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image(alt: str, png: bytes) -> str:
    """A markdown image carrying its PNG."""
    return f"![{alt}]({data_uri(png)})"


def embed(markdown: str, base: Path) -> str:
    """Replace every relative image path (relative to `base`) with the PNG's bytes as a data URI.

    A target that is not a file becomes a visible note instead of a broken image.
    """

    def sub(m: re.Match) -> str:
        alt, target = m.groups()
        if target.startswith(EMBEDDED):
            return m.group(0)
        path = base / target
        return image(alt, path.read_bytes()) if path.is_file() else f"*({alt}: {target} not found)*"

    return IMAGE.sub(sub, markdown)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _curve(ax, rows: list[dict], key: str, title: str) -> None:
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    ax.plot(xs, ys, marker="o" if len(pts) <= 30 else None, markersize=3, color="#2f6fb0")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)


# The DPO metrics TRL logs that tell whether preference learning happens (metrics.jsonl, one row per logging step).
TRAIN_CURVES = {"loss": "DPO loss", "rewards/margins": "rewards/margins (chosen − rejected)",
                "rewards/accuracies": "rewards/accuracies (chosen > rejected)"}


def train_curves(rows: list[dict]) -> bytes | None:
    """Loss, reward margin and reward accuracy against the step, one panel each (train's metrics.jsonl)."""
    rows = [r for r in rows if "step" in r and "loss" in r]  # the last row is the run summary (train_loss, ...)
    keys = [k for k in TRAIN_CURVES if any(r.get(k) is not None for r in rows)]
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        _curve(ax, rows, key, TRAIN_CURVES[key])
    return _png(fig)


def pretrain_curves(rows: list[dict], heldout: dict | None) -> bytes | None:
    """Pretraining loss against the step, and held-out accuracy per question kind beside its majority baseline."""
    rows = [r for r in rows if "step" in r and r.get("loss") is not None]
    acc = (heldout or {}).get("accuracy") or {}
    if not rows and not acc:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3), gridspec_kw={"width_ratios": [3, 2]})
    if rows:
        _curve(axes[0], rows, "loss", "pretraining loss (answer tokens)")
    else:
        axes[0].axis("off")
    if acc:
        kinds = [k for k in acc if k != "all"] + [k for k in acc if k == "all"]  # overall last
        major = (heldout or {}).get("majority") or {}
        bars = axes[1].bar(kinds, [100 * acc[k] for k in kinds], color="#2f6fb0", label="model")
        axes[1].bar_label(bars, labels=[f"{100 * acc[k]:.0f}" for k in kinds], fontsize=7)
        if major:
            axes[1].scatter(kinds, [100 * major.get(k, float("nan")) for k in kinds], marker="_", s=300,
                            color="black", label="majority answer", zorder=3)
        axes[1].set_ylim(0, 130)  # headroom for the bar labels and the legend
        axes[1].set_title(f"held-out accuracy, % ({heldout.get('questions', '?')} questions)", fontsize=9)
        axes[1].tick_params(labelsize=7)
        axes[1].tick_params(axis="x", rotation=30)
        axes[1].legend(fontsize=7, loc="upper center", ncol=2)
    else:
        axes[1].axis("off")
    return _png(fig)
