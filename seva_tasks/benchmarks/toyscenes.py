"""The few facts the benchmark writers read from a toy scene, in one place.

Scenes are `seva_tasks.toy.random_scene` records: `objects` [{shape, color, box, position
(left|right), vertical (top|bottom)}], `sign` {text, color} or None, `book` {title, author, genre}
or None, `caption`; `toy.render(scene)` draws one. A change to that record touches only this file.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

COLORS = ("red", "green", "blue", "yellow", "purple", "orange")  # toy.COLORS' names


def draw(n_shapes: int, n_signs: int, n_books: int, seed: int) -> list[dict]:
    """Held-out scenes for the benchmarks (their own seed stream, so training scenes never repeat)."""
    from seva_tasks import toy

    rng = random.Random(f"{seed}:benchmarks")
    kinds = ["shapes"] * n_shapes + ["sign"] * n_signs + ["book"] * n_books
    return [toy.random_scene(rng, kind, f"bench/{i:05d}.jpg") for i, kind in enumerate(kinds)]


def save_image(scene: dict, dst: Path) -> None:
    """Render the scene to `dst` (format from the suffix, as the real benchmark stores it)."""
    from seva_tasks import toy

    dst.parent.mkdir(parents=True, exist_ok=True)
    img = toy.render(scene)
    img.save(dst, **({"quality": 95} if dst.suffix.lower() in (".jpg", ".jpeg") else {}))


def image_bytes(scene: dict) -> bytes:
    """The rendered scene as JPEG bytes (MMBench keeps images base64 in its TSV)."""
    import io

    from seva_tasks import toy

    buf = io.BytesIO()
    toy.render(scene).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def objects(scene: dict) -> list[dict]:
    return list(scene.get("objects") or [])


def object_names(scene: dict) -> set[str]:
    """Nouns a POPE-style question can ask about ("Is there a circle in the image?")."""
    return {o["shape"] for o in objects(scene)}


def shape_counts(scene: dict) -> Counter:
    return Counter(o["shape"] for o in objects(scene))


def colors_of(scene: dict, shape: str) -> list[str]:
    return sorted({o["color"] for o in objects(scene) if o["shape"] == shape})


def position_of(obj: dict) -> str:
    return obj["position"]  # 'left' or 'right' of the image centre (toy._place)


def text(scene: dict) -> str | None:
    """The main text written in the image: a sign's words or a book's title."""
    if scene.get("sign"):
        return scene["sign"]["text"]
    if scene.get("book"):
        return scene["book"]["title"]
    return None


def caption(scene: dict) -> str:
    return scene["caption"]


def plural(noun: str, n: int) -> str:
    return noun if n == 1 else noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")
