"""Toy scenes: the records that are the ground truth of every toy image, and their drawing.

A scene is a JSON-able dict (see `random_scene`); `render(scene)` draws it, deterministically, so
the mix, the benchmarks and the pretrain stage can all ask questions whose answers are true.
"""

from __future__ import annotations

import functools
import random

from PIL import Image, ImageDraw, ImageFont

COLORS = {
    "red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220),
    "yellow": (240, 210, 40), "purple": (140, 60, 170), "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "diamond")
BACKGROUNDS = {"white": (250, 250, 250), "gray": (190, 190, 195), "beige": (235, 225, 200)}
INKS = {"black": (20, 20, 20), "white": (250, 250, 250)}
PALETTE = {**COLORS, **BACKGROUNDS, **INKS}

SMALL_SHARE = 0.3  # objects drawn small: the ones a model misses (POPE F1 0.91 -> 0.87 from 0.2, y4 -> y7)
# Shapes come in families that co-occur, as forks and knives do in COCO: most of a scene's objects are of its
# family, so a model unsure of an object can guess it from the others (a prior for noise to expose), and
# POPE's adversarial split (the absent object that co-occurs most) asks about the missing partner.
FAMILIES = (("circle", "square"), ("triangle", "diamond"))
FAMILY_SHARE = 0.8  # objects drawn from their scene's family; the rest from any family
# How far an object's fill is from the background toward its colour (1: the colour itself). Calibrated so
# that SeVa's noise step (t=500: 0.863·x0 + 0.505·ε in CLIP-normalized units, ~35/255 a pixel) blurs shapes
# that a clean image shows plainly: objects differ from the background by 46-77/255 in their strongest channel.
# Measured (experiments/miniature): the held-out drop is 0.08 at 1.0, 0.12 at 0.5, 0.16 at 0.4 and 0.17 at 0.3
# (w5-w9, shapes drawn independently); with shape families 0.15-0.17 at 0.4 and 0.16-0.21 at 0.35 (y1-y6), where
# the tower still sees shape (0.96-0.97 per patch; 0.77 at 0.3).
CONTRAST = 0.35

# OCR-VQA's genre names (Amazon categories). A cover shows its genre by its colour and the icon in its middle:
# each genre has its own (colour, icon) pair, so a model that sees colour and shape can read the genre.
GENRES = {
    "Travel": "blue", "Cookbooks, Food & Wine": "orange", "History": "purple", "Romance": "red",
    "Science & Math": "green", "Children's Books": "yellow", "Self-Help": "orange",
    "Mystery, Thriller & Suspense": "purple", "Sports & Outdoors": "green", "Humor & Entertainment": "yellow",
}
GENRE_ICONS = {genre: "square" if genre in ("Self-Help", "Mystery, Thriller & Suspense", "Sports & Outdoors",
                                            "Humor & Entertainment") else "circle" for genre in GENRES}
TITLE_WORDS = (
    ("The", "Silent", "Golden", "Little", "Hidden", "Last", "Quiet", "Lost", "Bright", "Wild"),
    ("River", "Garden", "Kitchen", "Mountain", "Secret", "Journey", "Island", "Letter", "Forest", "City"),
)
FIRST_NAMES = ("Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas", "Lena", "Omar")
LAST_NAMES = ("Adams", "Brown", "Costa", "Dubois", "Evans", "Fischer", "Garcia", "Hill", "Ito", "Jensen", "Novak")
SIGN_NAMES = ("ROSA", "BLUE", "SUNNY", "CITY", "OAK", "STAR", "NORTH", "LUCKY")
SIGN_PLACES = ("CAFE", "BAKERY", "HOTEL", "PHARMACY", "MARKET", "DINER", "BOOKS", "PARKING")
SIGN_WORDS = ("OPEN", "STOP", "EXIT", "SALE", "BUS STOP", "NO ENTRY", "MAIN ST", "ONE WAY")


# --------------------------------------------------------------------------------------------
# Records


def random_scene(rng: random.Random, kind: str, image: str) -> dict:
    """A new scene record of `kind` ('shapes', 'book' or 'sign') whose image will live at `image`.

    Record: image, kind, width, height, background; objects [{shape, color, box, position
    (left|right), vertical (top|bottom)}]; texts [{role, text, box, size, ink}]; book {title,
    author, genre, icon, ink, icon_box} or None; sign {text, color, box} or None; ocr_tokens; caption. Boxes are
    [x0, y0, x1, y1] in pixels; colours are keys of PALETTE.
    """
    make = {"shapes": _shapes_scene, "book": _book_scene, "sign": _sign_scene}
    if kind not in make:
        raise ValueError(f"Unknown scene kind {kind!r}; use one of {', '.join(make)}.")
    scene = {"image": image, "kind": kind, "objects": [], "texts": [], "book": None, "sign": None,
             "ocr_tokens": [], **make[kind](rng)}
    scene["caption"] = caption(scene)
    return scene


def _shapes_scene(rng: random.Random) -> dict:
    """1-4 shapes on a square canvas, each alone in a cell of a 2x2 grid, so left/right and top/bottom are
    never ambiguous and, in the model's 64-px input, a cell is 2x2 patches: most objects span 17-27 px there,
    a `SMALL_SHARE` of them 8-13 px (the fine detail that SeVa's noise step destroys first)."""
    side = rng.choice([96, 112, 128])
    cells = sorted(rng.sample(range(4), rng.randint(1, 4)))
    family = rng.choice(FAMILIES)
    shapes = [rng.choice(family) if rng.random() < FAMILY_SHARE else rng.choice(SHAPES) for _ in cells]
    objects = [_place(rng, c % 2, c // 2, 2, 2, side, side, shape) for c, shape in zip(cells, shapes)]
    return {"width": side, "height": side, "background": rng.choice(list(BACKGROUNDS)), "objects": objects}


def _place(rng: random.Random, col: int, row: int, cols: int, rows: int, w: int, h: int, shape: str | None = None) -> dict:
    """A shape (random unless given) inside one grid cell (side 55-85 % of the cell's, or 25-40 % for a small one)."""
    cw, ch = w / cols, h / rows
    small = rng.random() < SMALL_SHARE
    side = int(min(cw, ch) * (rng.uniform(0.25, 0.4) if small else rng.uniform(0.55, 0.85)))
    x0 = int(cw * col + rng.uniform(0, cw - side))
    y0 = int(ch * row + rng.uniform(0, ch - side))
    return {"shape": shape or rng.choice(SHAPES), "color": rng.choice(list(COLORS)), "box": [x0, y0, x0 + side, y0 + side],
            "position": "left" if col < cols / 2 else "right", "vertical": "top" if row < rows / 2 else "bottom"}


def _book_scene(rng: random.Random) -> dict:
    """A book cover: title on top, the genre's icon in the middle, author below; colour and icon follow the genre."""
    w, h = 80, 120
    genre = rng.choice(list(GENRES))
    title = " ".join(rng.choice(words) for words in TITLE_WORDS)
    author = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    ink = "black" if GENRES[genre] in ("yellow", "orange") else "white"
    texts = [{"role": "title", "text": _wrap(title, 10), "box": [2, 4, w - 2, 42], "size": 11, "ink": ink},
             {"role": "author", "text": _wrap(author, 12), "box": [2, 88, w - 2, 116], "size": 9, "ink": ink}]
    return {"width": w, "height": h, "background": GENRES[genre], "texts": texts,
            "book": {"title": title, "author": author, "genre": genre, "icon": GENRE_ICONS[genre], "ink": ink,
                     "icon_box": [22, 46, 58, 82]},
            "ocr_tokens": (title + " " + author).split()}


def _sign_scene(rng: random.Random) -> dict:
    """A coloured board on a pole with one or two words on it, sometimes a shape beside it."""
    w, h = 128, 72
    text = rng.choice([f"{rng.choice(SIGN_NAMES)} {rng.choice(SIGN_PLACES)}", rng.choice(SIGN_WORDS)])
    color = rng.choice(list(COLORS))
    ink = "black" if color in ("yellow", "orange") else "white"
    board = [8, 6, 88, 44]
    scene = {"width": w, "height": h, "background": rng.choice(list(BACKGROUNDS)),
             "texts": [{"role": "sign", "text": _wrap(text, 9), "box": board, "size": 12, "ink": ink}],
             "sign": {"text": text, "color": color, "box": board}, "ocr_tokens": text.split()}
    if rng.random() < 0.5:  # a shape on the right half gives signs a VQA question too
        scene["objects"] = [_place(rng, 3, rng.randrange(2), 4, 2, w, h)]
    return scene


def _wrap(text: str, width: int) -> str:
    """Greedy word wrap to lines of at most `width` characters (longer words stay whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "\n".join(lines)


def caption(scene: dict) -> str:
    """A one-sentence description of a scene (TextCaps/COCO-style caption, LLaVA-Bench context)."""
    if scene["book"]:
        b = scene["book"]
        return f'The {scene["background"]} cover of the book "{b["title"]}" by {b["author"]}, with {article(b["ink"])} {b["icon"]}.'
    things = [f"{article(o['color'])} {o['shape']} on the {o['vertical']} {o['position']}" for o in scene["objects"]]
    listing = ", ".join(things[:-1]) + (" and " if len(things) > 1 else "") + (things[-1] if things else "")
    if scene["sign"]:
        s = scene["sign"]
        beside = f" next to {listing}." if things else "."
        return f'{article(s["color"]).capitalize()} sign that says "{s["text"]}"{beside}'
    return f"A {scene['background']} picture with {listing}."


def article(word: str) -> str:
    """The word with its indefinite article ("an orange", "a red")."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


# --------------------------------------------------------------------------------------------
# Drawing


def render(scene: dict) -> Image.Image:
    """Draw a scene record as an RGB image (deterministic: same record, same pixels)."""
    img = Image.new("RGB", (scene["width"], scene["height"]), PALETTE[scene["background"]])
    draw = ImageDraw.Draw(img)
    if scene["sign"]:
        x0, y0, x1, y1 = scene["sign"]["box"]
        mid = (x0 + x1) // 2
        draw.rectangle([mid - 2, y1, mid + 2, scene["height"]], fill=(110, 90, 70))  # the pole
        draw.rectangle(scene["sign"]["box"], fill=COLORS[scene["sign"]["color"]], outline=INKS["black"])
    if scene["book"]:
        _draw_shape(draw, scene["book"]["icon"], scene["book"]["icon_box"], INKS[scene["book"]["ink"]])
    ground = PALETTE[scene["background"]]
    for obj in scene["objects"]:
        fill = tuple(round(g + CONTRAST * (c - g)) for c, g in zip(COLORS[obj["color"]], ground))
        _draw_shape(draw, obj["shape"], obj["box"], fill)
    for t in scene["texts"]:
        x0, y0, x1, y1 = t["box"]
        draw.multiline_text(((x0 + x1) / 2, (y0 + y1) / 2), t["text"], font=_font(t["size"]),
                            fill=PALETTE[t["ink"]], anchor="mm", align="center", spacing=2)
    return img


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: list[int], fill: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(mx, y0), (x1, y1), (x0, y1)], fill=fill)
    else:  # diamond
        draw.polygon([(mx, y0), (x1, my), (mx, y1), (x0, my)], fill=fill)


@functools.lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font (needs no system fonts, so pixels are the same everywhere)."""
    return ImageFont.load_default(size=size)
