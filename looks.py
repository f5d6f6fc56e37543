"""The generator's many-style mode: every captcha draws its own look from a wide, seeded space.

A base model trained on one look reads other looks poorly; breadth of looks (domain
randomisation) is what lets it read renderers and sites it never saw. Each captcha draws:
a canvas size and aspect of real captchas; a label of 3-8 characters from digits, letters
or both; a font from every text font this machine has; per-character or whole-word layout
with rotation, scale, spacing or overlap and baseline jitter; filled, outlined, hollow,
shadowed or bold glyphs; flat, gradient, noisy or striped backgrounds, light or dark; curves,
arcs, strike-through lines, dots, ovals and grids as noise; sine, elastic or perspective
warps; blur, JPEG artefacts and low resolution. ``draw_look`` returns the look's parameters
with the image, so a failure can be traced to what drew it (the parquet ``look`` column).

Every parameter's range is in LOOK_RANGES (numbers: [low, high]; choices: the allowed values).
"""

import io
import string
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from captcha_generator import all_fonts, elastic_transform

ALPHABETS = {
    "digits": string.digits,
    "lower": string.ascii_lowercase,
    "upper": string.ascii_uppercase,
    "lower+digits": string.ascii_lowercase + string.digits,
    "upper+digits": string.ascii_uppercase + string.digits,
    "mixed": string.digits + string.ascii_letters,
}
ALPHABET_WEIGHTS = (0.2, 0.1, 0.15, 0.15, 0.15, 0.25)
LENGTHS, LENGTH_WEIGHTS = (3, 4, 5, 6, 7, 8), (0.05, 0.25, 0.25, 0.25, 0.12, 0.08)

LOOK_RANGES = {
    "height": [24, 80],
    "aspect": [2.0, 4.8],
    "length": [3, 8],
    "alphabet": list(ALPHABETS),
    "layout": ["chars", "word"],
    "text_size": [0.5, 0.95],  # font size as a share of the height
    "rotation": [0.0, 40.0],  # largest per-character (or whole-word) rotation, degrees
    "spacing": [-0.2, 0.25],  # share of a glyph's width added between characters (negative: overlap)
    "baseline": [0.0, 0.15],  # per-character vertical jitter, share of the height
    "scale_jitter": [0.0, 0.25],  # per-character size variation
    "glyph": ["fill", "outline", "hollow", "shadow", "bold"],
    "ink": ["one", "per_char"],
    "dark": [False, True],  # light text on a dark background
    "background": ["flat", "gradient", "noise", "stripes"],
    "curves": [0, 3],
    "arcs": [0, 3],
    "strike": [0, 2],
    "dots": [0, 400],
    "ovals": [0, 6],
    "grid": [False, True],
    "line_width": [1, 3],
    "warp": ["none", "sine", "elastic", "perspective"],
    "warp_strength": [0.0, 1.0],
    "blur": [0.0, 1.2],
    "jpeg": [0, 90],  # JPEG quality of a re-encoding (0: none)
    "downscale": [0.4, 1.0],  # drawn this much smaller, then scaled back up (1: none)
}

# fonts that do not draw letters as letters (symbols, dingbats, maths extensions)
_NOT_TEXT = ("symbol", "dingbat", "d050000l", "cmex", "cmsy", "cmmi", "stixsize", "stixnonuni", "mathtext", "emoji")
_CHARS = string.digits + string.ascii_letters


def _covers_alphanumerics(path: str) -> bool:
    """True when the font draws the 62 alphanumerics as 62 distinct, non-empty glyphs (a font
    lacking them draws one .notdef box for each)."""
    try:
        font = ImageFont.truetype(path, 24)
        masks = {bytes(font.getmask(ch)) for ch in _CHARS}
    except OSError:
        return False
    return len(masks) >= len(_CHARS) - 2 and b"" not in masks


@lru_cache(maxsize=1)
def font_pool(system_fonts: str = "/usr/share/fonts") -> tuple[str, ...]:
    """Every text font drawing the 62 alphanumerics: matplotlib's 21 and the TrueType /
    OpenType files under ``system_fonts`` (Debian's fonts-* packages), sorted, so a seed
    draws the same captchas on machines with the same fonts."""
    found = sorted(str(p) for p in Path(system_fonts).rglob("*") if p.suffix.lower() in (".ttf", ".otf"))
    candidates = all_fonts() + [f for f in found if not any(word in f.lower() for word in _NOT_TEXT)]
    by_name = {}  # one file per font name: matplotlib's DejaVu is Debian's too
    for f in candidates:
        by_name.setdefault(Path(f).name, f)
    return tuple(f for f in by_name.values() if _covers_alphanumerics(f))


def _pick(rng: np.random.Generator, options, weights=None):
    return options[int(rng.choice(len(options), p=None if weights is None else np.asarray(weights) / np.sum(weights)))]


def _uniform(rng: np.random.Generator, name: str, high_share: float = 1.0) -> float:
    low, high = LOOK_RANGES[name]
    return float(rng.uniform(low, low + (high - low) * high_share))


def _integer(rng: np.random.Generator, name: str) -> int:
    low, high = LOOK_RANGES[name]
    return int(rng.integers(low, high + 1))


def sample_look(rng: np.random.Generator, fonts: tuple[str, ...], charset: str = _CHARS, lengths: tuple[int, int] = (3, 8)) -> dict:
    """One captcha's look: a dict of plain values, each inside LOOK_RANGES; its length within
    ``lengths`` and its alphabet one of ALPHABETS that ``charset`` has characters of."""
    alphabets = [name for name, chars in ALPHABETS.items() if set(chars) & set(charset)]
    allowed = [n for n in LENGTHS if lengths[0] <= n <= lengths[1]]
    if not alphabets or not allowed:
        raise ValueError(f"the many-style mode draws lengths 3-8 of letters and digits; nothing fits {charset!r} at {lengths}")
    height = _integer(rng, "height")
    busy = rng.random()  # how much noise this look carries overall: most captchas are clean or mildly noisy
    look = {
        "height": height,
        "aspect": round(_uniform(rng, "aspect"), 3),
        "length": int(_pick(rng, allowed, [LENGTH_WEIGHTS[LENGTHS.index(n)] for n in allowed])),
        "alphabet": _pick(rng, alphabets, [ALPHABET_WEIGHTS[list(ALPHABETS).index(a)] for a in alphabets]),
        "font": fonts[int(rng.integers(len(fonts)))],
        "layout": _pick(rng, LOOK_RANGES["layout"], (0.7, 0.3)),
        "text_size": round(_uniform(rng, "text_size"), 3),
        "rotation": round(_uniform(rng, "rotation") * float(rng.random() < 0.8), 2),
        "spacing": round(_uniform(rng, "spacing"), 3),
        "baseline": round(_uniform(rng, "baseline"), 3),
        "scale_jitter": round(_uniform(rng, "scale_jitter"), 3),
        "glyph": _pick(rng, LOOK_RANGES["glyph"], (0.55, 0.1, 0.1, 0.1, 0.15)),
        "ink": _pick(rng, LOOK_RANGES["ink"]),
        "dark": bool(rng.random() < 0.12),
        "background": _pick(rng, LOOK_RANGES["background"], (0.4, 0.25, 0.2, 0.15)),
        "curves": int(rng.integers(0, 4) * (busy > 0.3)),
        "arcs": int(rng.integers(0, 4) * (busy > 0.6)),
        "strike": int(rng.integers(0, 3) * (busy > 0.5)),
        "dots": int(rng.integers(0, 401) * (busy > 0.4) * rng.random()),
        "ovals": int(rng.integers(0, 7) * (busy > 0.75)),
        "grid": bool(rng.random() < 0.08),
        "line_width": min(_integer(rng, "line_width"), max(1, height // 20)),  # no 3-pixel strokes on a 25-pixel captcha
        "warp": _pick(rng, LOOK_RANGES["warp"], (0.35, 0.2, 0.3, 0.15)),
        "warp_strength": round(_uniform(rng, "warp_strength"), 3),
        "blur": round(_uniform(rng, "blur") * float(rng.random() < 0.3), 3),
        "jpeg": int(rng.integers(15, 91) * (rng.random() < 0.25)),
        "downscale": round(_uniform(rng, "downscale") if rng.random() < 0.2 else 1.0, 3),
    }
    if look["downscale"] < 1.0:  # one softening at a time: blur after low resolution leaves nothing to read
        look["blur"] = 0.0
    look["font"] = str(look["font"])
    return look


def _colour_pair(rng: np.random.Generator, dark: bool) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(background, ink) far enough apart in brightness to read."""
    light = tuple(int(c) for c in rng.integers(170, 256, size=3))
    deep = tuple(int(c) for c in rng.integers(0, 120, size=3))
    return (deep, light) if dark else (light, deep)


def _near(colour: tuple, rng: np.random.Generator, spread: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-spread, spread + 1), 0, 255)) for c in colour)


def _background(look: dict, size: tuple[int, int], colour: tuple, rng: np.random.Generator) -> Image.Image:
    w, h = size
    base = np.empty((h, w, 3), np.float32)
    base[:] = colour
    kind = look["background"]
    if kind == "gradient":
        other = np.asarray(_near(colour, rng, 70), np.float32)
        t = np.linspace(0, 1, w if rng.random() < 0.6 else h, dtype=np.float32)
        t = t[None, :, None] if len(t) == w else t[:, None, None]
        base = base * (1 - t) + other * t
    elif kind == "noise":
        base += rng.normal(0, 18, size=(h, w, 1 if rng.random() < 0.5 else 3))
    elif kind == "stripes":
        period = int(rng.integers(3, 9))
        mask = (np.add.outer(np.arange(h), np.arange(w) * int(rng.integers(-1, 2))) % period) == 0
        base[mask] = _near(colour, rng, 60)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def _glyph_tile(ch: str, font: ImageFont.FreeTypeFont, look: dict, ink: tuple, bg: tuple, rng: np.random.Generator) -> Image.Image:
    """``ch`` as an RGBA tile in the look's glyph style, rotated."""
    left, top, right, bottom = font.getbbox(ch)
    pad = 4 + look["line_width"]
    size = (right - left + 2 * pad, bottom - top + 2 * pad)
    tile = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    at = (pad - left, pad - top)
    stroke = max(1, round(font.size / 18))
    glyph = look["glyph"]
    if glyph == "shadow":
        offset = max(1, round(font.size / 14))
        draw.text((at[0] + offset, at[1] + offset), ch, font=font, fill=_near(ink, rng, 90) + (255,))
        draw.text(at, ch, font=font, fill=ink + (255,))
    elif glyph == "outline":
        draw.text(at, ch, font=font, fill=(0, 0, 0, 0), stroke_width=stroke, stroke_fill=ink + (255,))
    elif glyph == "hollow":
        draw.text(at, ch, font=font, fill=bg + (255,), stroke_width=stroke, stroke_fill=ink + (255,))
    else:
        draw.text(at, ch, font=font, fill=ink + (255,), stroke_width=stroke if glyph == "bold" else 0, stroke_fill=ink + (255,))
    angle = float(rng.uniform(-look["rotation"], look["rotation"]))
    return tile.rotate(angle, Image.BICUBIC, expand=True) if angle else tile


def _paste_text(img: Image.Image, text: str, look: dict, ink: tuple, bg: tuple, rng: np.random.Generator) -> None:
    """Draw ``text`` per character (each its own rotation, size and height) or as one word
    (one rotation for the whole), scaled to fit inside the canvas: every character stays visible."""
    w, h = img.size
    size = max(8, round(h * look["text_size"]))
    per_char = look["layout"] == "chars"
    jitter = look["scale_jitter"] if per_char else 0.0
    inks = [ink if look["ink"] == "one" else _near(ink, rng, 80) for _ in text]
    word_look = look | {"rotation": 0.0} if not per_char else look
    tiles = [
        _glyph_tile(ch, _font(look["font"], max(6, round(size * rng.uniform(1 - jitter, 1 + jitter)))), word_look, c, bg, rng)
        for ch, c in zip(text, inks)
    ]
    gaps = [round(t.width * look["spacing"]) if per_char else round(size * min(0.0, look["spacing"]) * 0.3) for t in tiles]
    pad = 4 + look["line_width"]
    steps = [max(1, t.width - 2 * pad + g) for t, g in zip(tiles, gaps)]
    span = sum(steps[:-1]) + tiles[-1].width
    tallest = max(t.height for t in tiles)
    layer = Image.new("RGBA", (span, tallest + round(2 * look["baseline"] * h) + 1), (0, 0, 0, 0))
    x = 0
    for tile, step in zip(tiles, steps):
        y = round((layer.height - tile.height) / 2 + rng.uniform(-look["baseline"], look["baseline"]) * h)
        layer.alpha_composite(tile, (x, max(0, min(layer.height - tile.height, y))))
        x += step
    layer = layer.crop(layer.getbbox() or (0, 0, 1, 1))
    if not per_char and look["rotation"]:
        layer = layer.rotate(float(rng.uniform(-1, 1)) * min(look["rotation"], 12.0), Image.BICUBIC, expand=True)
        layer = layer.crop(layer.getbbox() or (0, 0, 1, 1))
    scale = min(1.0, 0.94 * w / layer.width, 0.94 * h / layer.height)
    if scale < 1.0:
        layer = layer.resize((max(1, round(layer.width * scale)), max(1, round(layer.height * scale))), Image.BICUBIC)
    x = int(rng.integers(0, max(1, w - layer.width + 1)))
    y = int(rng.integers(0, max(1, h - layer.height + 1)))
    img.paste(layer, (x, y), layer)


@lru_cache(maxsize=2048)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _noise(img: Image.Image, look: dict, ink: tuple, rng: np.random.Generator) -> None:
    """Curves, arcs, strike-through lines, dots, ovals and a grid, drawn over the text."""
    draw = ImageDraw.Draw(img)
    w, h = img.size
    width = look["line_width"]

    def colour():
        return ink if rng.random() < 0.6 else _near(ink, rng, 120)

    for _ in range(look["curves"]):  # a cubic Bezier from left to right
        p = np.array(
            [
                [0, rng.uniform(0, h)],
                [rng.uniform(0, w), rng.uniform(-h, 2 * h)],
                [rng.uniform(0, w), rng.uniform(-h, 2 * h)],
                [w, rng.uniform(0, h)],
            ]
        )
        t = np.linspace(0, 1, 60)[:, None]
        points = (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]
        draw.line([tuple(q) for q in points.tolist()], fill=colour(), width=width)
    for _ in range(look["arcs"]):
        x0, y0 = rng.uniform(-w / 2, w * 0.8), rng.uniform(-h / 2, h * 0.8)
        box = (x0, y0, x0 + rng.uniform(w / 4, w), y0 + rng.uniform(h / 2, 2 * h))
        draw.arc(box, float(rng.uniform(0, 360)), float(rng.uniform(0, 360)), fill=colour(), width=width)
    for _ in range(look["strike"]):  # through the middle band, where the text is
        y0, y1 = rng.uniform(0.3 * h, 0.7 * h, size=2)
        draw.line([(0, float(y0)), (w, float(y1))], fill=colour(), width=width)
    for _ in range(look["ovals"]):
        cx, cy, rx, ry = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(2, h / 2), rng.uniform(2, h / 2)
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), outline=colour(), width=1)
    if look["dots"]:
        xs, ys = rng.integers(0, w, look["dots"]), rng.integers(0, h, look["dots"])
        pixels = np.asarray(img).copy()
        pixels[ys, xs] = rng.integers(0, 256, size=(look["dots"], 3)) if rng.random() < 0.5 else ink
        img.paste(Image.fromarray(pixels))
    if look["grid"]:
        step = int(rng.integers(6, 16))
        grid_colour = colour()
        for x in range(int(rng.integers(0, step)), w, step):
            draw.line([(x, 0), (x, h)], fill=grid_colour, width=1)
        for y in range(int(rng.integers(0, step)), h, step):
            draw.line([(0, y), (w, y)], fill=grid_colour, width=1)


def _warp(img: Image.Image, look: dict, fill: tuple, rng: np.random.Generator) -> Image.Image:
    kind, strength = look["warp"], look["warp_strength"]
    w, h = img.size
    if kind == "elastic":
        return elastic_transform(img, rng, alpha=0.5 + 2.5 * strength)
    if kind == "sine":
        amplitude, period = 0.5 + strength * 0.1 * h, rng.uniform(0.4, 1.5) * w
        phase = rng.uniform(0, 2 * np.pi)
        pixels, out = np.asarray(img), np.empty_like(np.asarray(img))
        shifts = np.round(amplitude * np.sin(2 * np.pi * np.arange(w) / period + phase)).astype(int)
        for x, s in enumerate(shifts):
            out[:, x] = np.roll(pixels[:, x], s, axis=0)
        return Image.fromarray(out)
    if kind == "perspective":
        d = 0.12 * strength
        corners = [(0, 0), (0, h), (w, h), (w, 0)]  # PIL's QUAD order; each pulled inwards by up to d of the size
        src = [(x + (w if x == 0 else -w) * rng.uniform(0, d), y + (h if y == 0 else -h) * rng.uniform(0, d)) for x, y in corners]
        return img.transform(img.size, Image.QUAD, [c for point in src for c in point], Image.BICUBIC, fillcolor=fill)
    return img


def _degrade(img: Image.Image, look: dict) -> Image.Image:
    if look["blur"]:
        img = img.filter(ImageFilter.GaussianBlur(look["blur"]))
    if look["downscale"] < 1.0:
        small = (max(8, round(img.width * look["downscale"])), max(8, round(img.height * look["downscale"])))
        img = img.resize(small, Image.BILINEAR).resize(img.size, Image.BILINEAR)
    if look["jpeg"]:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=look["jpeg"])
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img


def draw_look(
    rng: np.random.Generator, fonts: tuple[str, ...], charset: str = _CHARS, lengths: tuple[int, int] = (3, 8)
) -> tuple[str, Image.Image, dict]:
    """One many-style captcha: (label, RGB image, look). The look is drawn first (sample_look),
    then the label from its alphabet (within ``charset``) and length, then the picture, all from ``rng``."""
    look = sample_look(rng, fonts, charset, lengths)
    alphabet = "".join(c for c in ALPHABETS[look["alphabet"]] if c in charset)
    label = "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=look["length"]))
    h = look["height"]
    w = int(np.clip(round(h * look["aspect"]), 75, 300))
    bg, ink = _colour_pair(rng, look["dark"])
    img = _background(look, (w, h), bg, rng)
    _paste_text(img, label, look, ink, bg, rng)
    _noise(img, look, ink, rng)
    img = _degrade(_warp(img, look, bg, rng), look)
    return label, img, look
