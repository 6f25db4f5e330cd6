"""Where a pretrained toy model goes wrong: held-out answers broken down by object count and size.

    .venv/bin/python experiments/miniature/diag.py MODEL_DIR [KINDS] [N]

Asks N fresh held-out questions (default 240, stream "diag", seed 5) of KINDS (comma-separated, default
all), prints accuracy per kind, per number of objects in the scene, for shape questions per size of the
asked object in the 64-px input (small < 16 px), and the commonest wrong answers.
"""

from __future__ import annotations

import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from seva_tasks.toy import heldout as H  # noqa: E402


def main(model_dir: str, kinds: str = ",".join(H.HELDOUT_KINDS), n: str = "240") -> None:
    model, proc = H.load(Path(model_dir))
    items = H.heldout(5, int(n), kinds=tuple(kinds.split(",")), stream="diag")
    answers = H.ask(model, proc, items)
    groups, wrong = defaultdict(list), Counter()
    for it, a in zip(items, answers):
        ok, scene = H.answer_matches(a, it["answer"]), it["scene"]
        groups[(it["kind"], "all")].append(ok)
        if scene["objects"]:
            groups[(it["kind"], f"{len(scene['objects'])} objects")].append(ok)
        if it["kind"] == "shape":
            color = it["question"].split("the ")[1].split(" object")[0]
            o = next(x for x in scene["objects"] if x["color"] == color)
            size = (o["box"][2] - o["box"][0]) * model.config.vision_config.image_size / max(scene["width"], scene["height"])
            groups[("shape", "small" if size < 16 else "large")].append(ok)
        if not ok:
            wrong[(it["kind"], it["answer"], a.strip()[:24])] += 1
    for (kind, group), hits in sorted(groups.items()):
        print(f"{kind:8} {group:10} n={len(hits):4} acc={sum(hits) / len(hits):.3f}")
    print("commonest wrong (kind, gold, answer):", wrong.most_common(12))


if __name__ == "__main__":
    main(*sys.argv[1:])
