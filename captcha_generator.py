"""Synthetic captchas in the shared parquet schema, plus a labelled grid picture.

Each captcha is drawn from its own random stream ``np.random.default_rng([seed, index])``,
so a seed gives byte-identical files whatever the number of worker processes.

    python captcha_generator.py --count 10000 --output data/generated.parquet
"""

import argparse
import io
import json
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from atomic import atomic_write
from config import HelpFormatter, add_dataclass_args, dataclass_from_args, option
from labels import DEFAULT_CHARSET
from parallel import ordered_map
from progress import progress_bar

SCHEMA = pa.schema(
    [
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("text", pa.string()),
    ]
)
LOOK_SCHEMA = SCHEMA.append(pa.field("look", pa.string()))  # the many-style mode's: each row's look as JSON
TEXT_TEMPLATE = "The text in this image is '{}'"
ROW_GROUP = 1000
GLYPH_PAD = 2  # blank pixels around a glyph's line box on each side


def _matplotlib_ttf() -> Path:
    """The folder of TrueType fonts that matplotlib ships, so every install has them."""
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def default_fonts() -> list[str]:
    """The DejaVu TrueType fonts that matplotlib ships, sorted."""
    return sorted(str(p) for p in _matplotlib_ttf().glob("DejaVu*.ttf") if "Display" not in p.name and "ExtraLight" not in p.name)


def all_fonts() -> list[str]:
    """Every text font matplotlib ships that draws the 62 alphanumerics: the 12 DejaVu, 4 STIX
    General (a Times-like serif) and 5 Computer Modern faces (roman, bold, sans, italic,
    typewriter). The varied style draws from these."""
    ttf = _matplotlib_ttf()
    stix = sorted(str(p) for p in ttf.glob("STIXGeneral*.ttf"))
    return default_fonts() + stix + [str(ttf / f"{name}.ttf") for name in ("cmr10", "cmb10", "cmss10", "cmti10", "cmtt10")]


@dataclass(frozen=True)
class CaptchaStyle:
    """Everything that shapes a captcha; one object travels to every worker. Each field is
    also a flag of this script (``--size-jitter`` for ``size_jitter``)."""

    width: int = option(150, "image width in pixels")
    height: int = option(50, "image height in pixels")
    min_len: int = option(4, "shortest label")
    max_len: int = option(8, "longest label")
    charset: str = option(DEFAULT_CHARSET, "characters labels are drawn from")
    fonts: tuple[str, ...] = option(
        (), "TrueType font files (default: matplotlib's 12 DejaVu fonts; with --varied all 21 of its text fonts)", nargs="+"
    )
    spots: int = option(20, "noise spots per captcha")
    lines: int = option(2, "noise strokes per captcha")
    rotation: float = option(25.0, "max per-character rotation in degrees")
    warp: float = option(1.5, "elastic warp strength in pixels (0: off)")
    text_size: tuple[float, float] = option((0.6, 0.85), "range of the font size, as a share of the height", nargs=2)
    stretch: float = option(1.0, "glyph width factor: below 1 condensed, above 1 extended")
    bold: bool = option(False, "strokes thickened by a pixel each side")
    one_colour: bool = option(False, "text, spots and strokes in one ink (else a colour each)")
    background: tuple[int, int] = option((170, 256), "range of each background channel", nargs=2)
    line_width: int = option(1, "width of the noise strokes in pixels")
    size_jitter: float = option(0.05, "each character's font size varies by up to this share")
    overlap: float = option(0.15, "neighbours overlap by up to this share of a character's width")
    fill_height: bool = option(
        False, "stretch every glyph to the line's height, so lowercase and capitals differ in shape only (as ImageCaptcha draws)"
    )
    varied: bool = option(
        False,
        "draw each captcha's look at random (glyph width, text size, bold, one ink or many, background, noise, "
        "rotation and warp around the values above) in all 21 fonts of all_fonts(): data of many looks",
    )
    mixed: bool = option(
        False,
        "the many-style mode (looks.py): each captcha draws its size, alphabet, font, layout, glyph style, colours, "
        "noise, warp and degradation from a wide space, in every text font this machine has; lengths within "
        "--min-len/--max-len, characters within --charset; the look of each row goes into a 'look' column",
    )

    def __post_init__(self):
        if not self.fonts:
            from looks import font_pool  # looks.py builds on this module

            fonts = font_pool() if self.mixed else all_fonts() if self.varied else default_fonts()
            object.__setattr__(self, "fonts", tuple(fonts))


def vary(style: CaptchaStyle, rng: np.random.Generator) -> CaptchaStyle:
    """One captcha's look drawn at random around ``style``: condensed or extended glyphs
    (0.5-1.4x wide), text filling up to the whole height, bold strokes, one ink or many, a
    pale or tinted background, no to heavy noise, little to strong rotation and warp, as
    captchas in the wild differ. A model trained on them reads more of a foreign style as
    it is, but was no better a base to fine-tune (bench/RESULTS.md, "Few labels")."""
    return replace(
        style,
        varied=False,
        stretch=float(np.exp(rng.uniform(np.log(0.5), np.log(1.4)))),
        text_size=(0.55, 1.0),
        bold=bool(rng.random() < 0.3),
        one_colour=bool(rng.random() < 0.5),
        background=(215, 256) if rng.random() < 0.5 else (170, 256),
        spots=int(rng.integers(0, 4 * style.spots + 1)),
        lines=int(rng.integers(0, style.lines + 2)),
        line_width=int(rng.integers(1, 3)),
        rotation=float(rng.uniform(0, 1.2 * style.rotation)),
        warp=float(rng.uniform(0, 1.6 * style.warp)),
    )


@lru_cache(maxsize=512)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


@lru_cache(maxsize=40000)  # the default's 12 fonts x 62 characters x 17 sizes fit, and --varied's 21 x 62 x 29
def _glyph(ch: str, path: str, size: int) -> Image.Image:
    """``ch`` drawn white on black (mode L), one text line high: the font's ascent and descent
    are kept, so glyphs pasted at one height share a baseline and lowercase letters stay
    smaller than capitals (c/C, o/O, x/X stay readable). Cached, as drawing it took about
    half of a captcha's time and the same glyphs recur (12,648 in the default style);
    callers must not modify the image."""
    font = _font(path, size)
    left, _, right, _ = font.getbbox(ch)
    ascent, descent = font.getmetrics()
    mask = Image.new("L", (right - left + 2 * GLYPH_PAD, ascent + descent + 2 * GLYPH_PAD), 0)
    ImageDraw.Draw(mask).text((GLYPH_PAD - left, GLYPH_PAD), ch, font=font, fill=255)
    return mask


def generate_random_string(rng: np.random.Generator, charset: str, min_len: int, max_len: int) -> str:
    """A label of uniform random length in [min_len, max_len] over ``charset``."""
    length = int(rng.integers(min_len, max_len + 1))
    return "".join(charset[i] for i in rng.integers(0, len(charset), size=length))


def _dark_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 140, size=3))


def _light_colour(rng: np.random.Generator, low: int, high: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(low, high, size=3))


def _char_tile(ch: str, path: str, size: int, rng: np.random.Generator, style: CaptchaStyle, ink: tuple | None) -> Image.Image:
    """One character in ``ink`` (or a colour of its own) and its own rotation, as an RGBA
    tile one text line high."""
    mask = _glyph(ch, path, size)
    if style.fill_height:  # the ink alone, stretched to the line's height (ImageCaptcha draws so)
        box = mask.getbbox() or (0, 0, 1, 1)
        mask = mask.crop(box).resize((box[2] - box[0], mask.height - 2 * GLYPH_PAD), Image.BICUBIC)
    if style.stretch != 1.0:
        mask = mask.resize((max(1, round(mask.width * style.stretch)), mask.height), Image.BICUBIC)
    if style.bold:
        mask = mask.filter(ImageFilter.MaxFilter(3))
    mask = mask.rotate(float(rng.uniform(-style.rotation, style.rotation)), Image.BICUBIC, expand=True)
    x0, _, x1, _ = mask.getbbox() or (0, 0, 1, 1)
    mask = mask.crop((x0, 0, x1, mask.height))
    tile = Image.new("RGBA", mask.size, ink or _dark_colour(rng))
    tile.putalpha(mask)
    return tile


def draw_text(img: Image.Image, text: str, rng: np.random.Generator, style: CaptchaStyle, ink: tuple | None = None) -> None:
    """Paste ``text`` onto ``img`` in place, character by character, neighbours overlapping.

    One font and size per captcha (each character's size jittered by ``style.size_jitter``),
    as a real site's captchas have; rotation, height and (without ``ink``) colour vary per character.
    """
    path = style.fonts[int(rng.integers(len(style.fonts)))]
    size = style.height * rng.uniform(*style.text_size)
    jitter = style.size_jitter
    tiles = [_char_tile(ch, path, round(size * rng.uniform(1 - jitter, 1 + jitter)), rng, style, ink) for ch in text]
    overlap = rng.uniform(0.0, style.overlap)
    advance = [max(1, round(t.width * (1 - overlap))) for t in tiles]
    span = sum(advance[:-1]) + tiles[-1].width
    scale = min(1.0, 0.94 * img.width / span, 0.98 * img.height / max(t.height for t in tiles))
    if scale < 1.0:
        tiles = [t.resize((max(1, round(t.width * scale)), max(1, round(t.height * scale))), Image.BICUBIC) for t in tiles]
        advance = [max(1, round(a * scale)) for a in advance]
        span = sum(advance[:-1]) + tiles[-1].width
    x = int(rng.integers(0, max(1, img.width - span + 1)))
    for tile, step in zip(tiles, advance):
        y = round((img.height - tile.height) / 2 + rng.uniform(-0.08, 0.08) * img.height)
        img.paste(tile, (x, y), tile)
        x += step


def draw_spots(img: Image.Image, rng: np.random.Generator, count: int, ink: tuple | None = None) -> None:
    """Scatter ``count`` small filled ellipses in ``ink`` (or random colours) over ``img`` in place."""
    draw = ImageDraw.Draw(img)
    for _ in range(count):
        x, y = int(rng.integers(0, img.width)), int(rng.integers(0, img.height))  # PIL draws numpy scalars 10x slower
        r = float(rng.uniform(0.5, 1.5))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=ink or tuple(int(c) for c in rng.integers(0, 256, size=3)))


def draw_lines(img: Image.Image, rng: np.random.Generator, count: int, width: int = 1, ink: tuple | None = None) -> None:
    """Draw ``count`` curved strokes across ``img`` in place (each a 3-segment polyline)."""
    draw = ImageDraw.Draw(img)
    for _ in range(count):
        xs = np.sort(rng.uniform(0, img.width, size=4))
        ys = rng.uniform(0, img.height, size=4)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=ink or _dark_colour(rng), width=width)


def elastic_transform(img: Image.Image, rng: np.random.Generator, alpha: float, grid: tuple[int, int] = (4, 10)) -> Image.Image:
    """Smooth random warp: a coarse (rows, cols) grid of offsets of std ``alpha`` pixels,
    upsampled bicubically to a dense field and applied with bilinear sampling."""
    if alpha <= 0:
        return img
    w, h = img.size
    fields = [
        np.asarray(Image.fromarray(rng.normal(0, alpha, size=grid).astype(np.float32), "F").resize((w, h), Image.BICUBIC)) for _ in range(2)
    ]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x = np.clip(xx + fields[0], 0, w - 1)
    y = np.clip(yy + fields[1], 0, h - 1)
    x0, y0 = np.minimum(x.astype(np.int32), w - 2), np.minimum(y.astype(np.int32), h - 2)
    fx, fy = x - x0, y - y0  # (h, w)
    # One plane per channel and np.take on flat indices: 2.5x faster than indexing an
    # (h, w, C) array by (y, x), with the same arithmetic, so a seed's bytes are unchanged.
    planes = np.asarray(img, dtype=np.float32).reshape(h * w, -1).T  # (C, h * w)
    corner = (y0 * w + x0).astype(np.intp)

    def sample(offset: int) -> np.ndarray:  # (C, h, w)
        return np.take(planes, corner + offset, axis=1)

    top = sample(0) * (1 - fx) + sample(1) * fx
    bottom = sample(w) * (1 - fx) + sample(w + 1) * fx
    warped = (top * (1 - fy) + bottom * fy + 0.5).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(warped.transpose(1, 2, 0)), img.mode)


def generate_captcha(text: str, rng: np.random.Generator, style: CaptchaStyle) -> Image.Image:
    """Draw one RGB captcha of ``style.width`` x ``style.height`` showing ``text``."""
    if style.varied:
        style = vary(style, rng)
    ink = _dark_colour(rng) if style.one_colour else None
    img = Image.new("RGB", (style.width, style.height), _light_colour(rng, *style.background))
    draw_spots(img, rng, style.spots, ink)
    draw_text(img, text, rng, style, ink)
    draw_lines(img, rng, style.lines, style.line_width, ink)
    return elastic_transform(img, rng, style.warp)


def draw_captcha(seed: int, index: int, style: CaptchaStyle) -> tuple[str, Image.Image, dict | None]:
    """Captcha ``index`` of ``seed``: (label, RGB image, its look in the many-style mode else None)."""
    rng = np.random.default_rng([seed, index])
    if style.mixed:
        from looks import draw_look

        return draw_look(rng, style.fonts, style.charset, (style.min_len, style.max_len))
    label = generate_random_string(rng, style.charset, style.min_len, style.max_len)
    return label, generate_captcha(label, rng, style), None


def render_rows(seed: int, start: int, stop: int, style: CaptchaStyle) -> list[tuple]:
    """Captchas ``start`` to ``stop - 1`` of ``seed`` as (PNG bytes, file name, text) rows, with
    the look as JSON fourth in the many-style mode."""
    rows = []
    for index in range(start, stop):
        label, image, look = draw_captcha(seed, index, style)
        buf = io.BytesIO()
        image.save(buf, "PNG", compress_level=1)
        row = (buf.getvalue(), f"{index:08d}.png", TEXT_TEMPLATE.format(label))
        rows.append(row if look is None else (*row, json.dumps(look)))
    return rows


def _to_table(rows: list[tuple]) -> pa.Table:
    images = pa.StructArray.from_arrays(
        [pa.array([r[0] for r in rows], pa.binary()), pa.array([r[1] for r in rows], pa.string())], names=["bytes", "path"]
    )
    columns = [images, pa.array([r[2] for r in rows], pa.string())]
    if len(rows[0]) == 4:
        return pa.Table.from_arrays([*columns, pa.array([r[3] for r in rows], pa.string())], schema=LOOK_SCHEMA)
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def generate_captcha_data(
    count: int,
    output: str | os.PathLike,
    seed: int = 0,
    style: CaptchaStyle | None = None,
    workers: int | None = None,
    row_group: int = ROW_GROUP,
) -> Path:
    """Write ``count`` captchas to parquet ``output`` in the shared schema.

    Rows are rendered in chunks of ``row_group`` on ``workers`` processes and written one row
    group at a time (a bounded number of chunks in flight), so memory does not grow with
    ``count``. The file is written under a temporary name and renamed when complete.
    """
    style = style or CaptchaStyle()
    if not style.fonts:
        raise ValueError("no fonts: pass --fonts or install matplotlib's DejaVu fonts")
    workers = workers or os.cpu_count() or 1
    chunks = ((seed, start, min(start + row_group, count), style) for start in range(0, count, row_group))
    schema = LOOK_SCHEMA if style.mixed else SCHEMA
    with (
        atomic_write(output) as tmp,
        pq.ParquetWriter(tmp, schema) as writer,
        progress_bar(total=count, unit="img", desc="generating") as bar,
    ):
        for rows in ordered_map(render_rows, chunks, workers):
            writer.write_table(_to_table(rows))
            bar.update(len(rows))
    return Path(output)


def save_grid_image(
    output: str | os.PathLike = "saved_captchas_grid/grid_captchas.png", seed: int = 0, style: CaptchaStyle | None = None, n: int = 100
) -> Path:
    """Save ``n`` captchas with their labels in a grid PNG (10 columns)."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = style or CaptchaStyle()
    cols = 10
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.0, rows * 0.9))
    for index, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if index < n:
            label, image, _ = draw_captcha(seed, index, style)
            ax.imshow(image)
            ax.set_title(label, fontsize=9, family="monospace")
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--count", type=int, default=10000, help="number of captchas to write")
    p.add_argument("--output", default="data/generated.parquet", help="output parquet file")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="worker processes")
    p.add_argument("--grid", default="saved_captchas_grid/grid_captchas.png", help="grid picture path ('' to skip)")
    add_dataclass_args(p, CaptchaStyle)
    a = p.parse_args()
    style = dataclass_from_args(CaptchaStyle, a)
    out = generate_captcha_data(a.count, a.output, a.seed, style, a.workers)
    print(f"wrote {a.count} captchas to {out}")
    if a.grid:
        print(f"wrote grid picture to {save_grid_image(a.grid, a.seed, style)}")


if __name__ == "__main__":
    main()
