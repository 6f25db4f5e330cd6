"""The few facts the benchmark writers read from a toy scene, in one place.

Scenes are the toy world's records (`seva_tasks.toy.scenes.random_scene`): `objects` [{shape, color,
box, position (left|right), vertical (top|bottom)}], `sign` {text, color} or None, `book` {title,
author, genre} or None, `caption`. The toy world passes its `render(scene) -> PIL image` to each
`write_toy`, so this package never imports the toy world. A change to the record touches only this file.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

Render = Callable[[dict], "Image.Image"]  # the toy world's scene -> image
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")  # the toy scenes' colour names


def save_image(image: Image.Image, dst: Path) -> None:
    """Save a rendered scene to `dst` (format from the suffix, as the real benchmark stores it)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    image.save(dst, **({"quality": 95} if dst.suffix.lower() in (".jpg", ".jpeg") else {}))


def jpeg_bytes(image: Image.Image) -> bytes:
    """A rendered scene as JPEG bytes (MMBench keeps images base64 in its TSV)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
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
    return obj["position"]  # 'left' or 'right' of the image centre


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
