"""Captchas of styles our generator does not make, written into the shared parquet schema:
the `captcha` package's ImageCaptcha (150x50, the default), wheezy.captcha's example
recipe (200x60: warped, rotated and offset glyphs of mixed sizes, a curve, noise,
smoothing; Debian's Liberation fonts unless --fonts is given) or multicolorcaptcha (256x144, four
upper-case letters and digits in its own fonts, lines, circles and noise). All are on PyPI.

    pip install -r requirements-bench.txt
    python bench/third_party_captchas.py --count 2000 --output third_party.parquet --seed 1
    python bench/third_party_captchas.py --style wheezy --count 2000 --output wheezy.parquet --seed 1
"""

import argparse
import io
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import machine  # noqa: F401  (puts the repository on sys.path)

from captcha_generator import SCHEMA, TEXT_TEMPLATE, generate_random_string
from config import HelpFormatter
from labels import DEFAULT_CHARSET
from progress import progress_bar


class SeededSecrets:
    """The part of the ``secrets`` module that captcha.image draws from (randbelow, randbits,
    choice), served by a seeded ``random.Random``: captcha 0.7 reads the OS's entropy, so
    without this no seed would give the same captchas twice."""

    def __init__(self, seed: str):
        self._rng = random.Random(seed)

    def randbelow(self, n: int) -> int:
        return self._rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)

    def choice(self, seq):
        return self._rng.choice(seq)


STYLES = ("imagecaptcha", "wheezy", "multicolor")
LIBERATION = (
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
)


def image_captcha_renderer(seed: int):
    """ImageCaptcha at 150x50: ``render(label, index)`` -> PIL image."""
    import captcha.image
    from captcha.image import ImageCaptcha

    writer = ImageCaptcha(width=150, height=50)

    def render(label: str, index: int):
        captcha.image.secrets = SeededSecrets(f"{seed}-{index}")
        return writer.generate_image(label)

    return render


def wheezy_renderer(seed: int, fonts: tuple[str, ...]):
    """wheezy.captcha's README recipe at 200x60 (font sizes scaled to the height): ``render(label, index)``."""
    from wheezy.captcha import image as wc

    missing = [f for f in fonts if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"fonts not found: {missing}; apt-get install fonts-liberation or pass --fonts")
    text = wc.text(fonts=list(fonts), font_sizes=(36, 40, 44), drawings=[wc.warp(), wc.rotate(), wc.offset()])
    draw = wc.captcha(width=200, height=60, drawings=[wc.background(), text, wc.curve(), wc.noise(), wc.smooth()])

    def render(label: str, index: int):
        random.seed(f"{seed}-{index}")  # wheezy.captcha draws from the random module
        return draw(label)

    return render


def multicolor_render(seed: int, index: int):
    """multicolorcaptcha's smallest size at difficulty 2: (label, image); it picks its own
    four characters (upper-case letters and digits)."""
    from multicolorcaptcha import CaptchaGenerator

    random.seed(f"{seed}-{index}")  # multicolorcaptcha draws from the random module
    made = CaptchaGenerator(0).gen_captcha_image(difficult_level=2, chars_mode="ascii", multicolor=bool(index % 2))
    return made.characters, made.image.convert("RGB")


def write_third_party(
    count: int, output: str | Path, seed: int, style: str = "imagecaptcha", fonts: tuple[str, ...] = LIBERATION,
    min_len: int = 4, max_len: int = 8, charset: str = DEFAULT_CHARSET,
) -> Path:  # fmt: skip
    """Write ``count`` captchas of ``style`` (one of STYLES), labels drawn like ours (multicolorcaptcha
    picks its own four characters); deterministic per seed. Returns the path."""
    if style not in STYLES:
        raise ValueError(f"style {style!r}: choose one of {STYLES}")
    if style == "imagecaptcha":
        render = image_captcha_renderer(seed)
    elif style == "wheezy":
        render = wheezy_renderer(seed, fonts)
    else:
        render = None
    rows = {"bytes": [], "path": [], "text": []}
    for index in progress_bar(range(count), desc=f"{style} captchas", unit="img", leave=False):
        rng = np.random.default_rng([seed, index])
        label = generate_random_string(rng, charset, min_len, max_len)
        if render is None:  # multicolorcaptcha picks its own characters
            label, image = multicolor_render(seed, index)
        else:
            image = render(label, index)
        buf = io.BytesIO()
        image.save(buf, "PNG")
        rows["bytes"].append(buf.getvalue())
        rows["path"].append(f"tp-{index:08d}.png")
        rows["text"].append(TEXT_TEMPLATE.format(label))
    images = pa.StructArray.from_arrays([pa.array(rows["bytes"], pa.binary()), pa.array(rows["path"])], names=["bytes", "path"])
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_arrays([images, pa.array(rows["text"])], schema=SCHEMA), output)
    return output


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--count", type=int, default=2000, help="captchas to write")
    p.add_argument("--output", default="third_party.parquet", help="parquet file to write")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--style", choices=STYLES, default="imagecaptcha", help="which package draws them")
    p.add_argument("--fonts", nargs="+", default=list(LIBERATION), help="TrueType fonts of the wheezy style")
    a = p.parse_args()
    print(f"wrote {write_third_party(a.count, a.output, a.seed, a.style, tuple(a.fonts))}")


if __name__ == "__main__":
    main()
