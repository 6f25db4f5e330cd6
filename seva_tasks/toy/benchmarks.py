"""The toy world's benchmark files: held-out scenes written in each benchmark's real on-disk layout.

Each benchmark module writes its own format (`write_toy(out_dir, scenes, rng_seed, render)`, next
to the loader that reads it); this module draws the scenes and hands over `render`, so that
`seva_tasks.benchmarks` never imports the toy world.
"""

from __future__ import annotations

import random
from pathlib import Path

from seva_tasks.benchmarks import BENCHMARKS, common, get, toyscenes
from seva_tasks.toy.scenes import random_scene, render

WRITERS = tuple(get(name) for name in BENCHMARKS)  # each module's write_toy, in BENCHMARKS order
# The benchmark modules whose source shapes the files (the toy world's identity hashes them).
SOURCES = (Path(__file__), *(Path(m.__file__) for m in (common, toyscenes, *WRITERS)))


def draw(n_shapes: int, n_signs: int, n_books: int, seed: int) -> list[dict]:
    """Held-out scenes for the benchmarks (their own seed stream, so training scenes never repeat)."""
    rng = random.Random(f"{seed}:benchmarks")
    kinds = ["shapes"] * n_shapes + ["sign"] * n_signs + ["book"] * n_books
    return [random_scene(rng, kind, f"bench/{i:05d}.jpg") for i, kind in enumerate(kinds)]


def write_toy_world(root: Path, seed: int, n_shapes: int = 24, n_signs: int = 8, n_books: int = 4) -> dict[str, Path]:
    """Every benchmark in its real layout under `root/<DIR>` from held-out toy scenes; returns name -> dir."""
    scenes = draw(n_shapes, n_signs, n_books, seed)
    out = {}
    for i, (name, mod) in enumerate(zip(BENCHMARKS, WRITERS)):
        out[name] = Path(root) / mod.DIR
        mod.write_toy(out[name], scenes, seed * 1000 + i, render)
    return out
