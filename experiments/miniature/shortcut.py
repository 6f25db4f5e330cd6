"""How far the "pick an option the caption mentions" shortcut goes on the held-out lettered choices.

    .venv/bin/python experiments/miniature/shortcut.py [N] [SEED]   # N held-out text questions (default 280, bind.py's), seed 0

A reader that picks uniformly among the options whose colour the caption names, without binding a colour to
its shape, scores the mean of 1 / (options present) over the choice questions (`toy.lm.heldout` of SEED: the
vicuna stage's set for its seed; bind.py always uses seed 0's).
"""

from __future__ import annotations

import sys

from seva_tasks.toy import lm


def main(n: str = "280", seed: str = "0") -> None:
    items = [it for it in lm.heldout(int(seed), int(n)) if it["kind"] == "choice"]
    present = []
    for it in items:
        caption, question = it["segments"][0][0].removeprefix("USER: ").split("\n", 1)
        options = [line.split(". ", 1)[1] for line in question.split("\n")[1:5]]
        present.append(sum(f" {o} " in caption for o in options))
    print(f"{len(items)} choice questions; only the right option present in {present.count(1)}; "
          f"shortcut accuracy {sum(1 / k for k in present) / len(items):.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
