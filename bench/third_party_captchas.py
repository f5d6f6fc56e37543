"""Captchas of a style our generator does not make: the `captcha` package from PyPI
(ImageCaptcha), written into the shared parquet schema.

    pip install -r requirements-bench.txt
    python bench/third_party_captchas.py --count 2000 --output third_party.parquet --seed 1
"""

import argparse
import io
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from common import machine  # noqa: F401  (puts the repository on sys.path)
from tqdm import tqdm

from captcha_generator import SCHEMA, TEXT_TEMPLATE, generate_random_string
from config import HelpFormatter
from labels import DEFAULT_CHARSET


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


def write_third_party(count: int, output: str | Path, seed: int, min_len: int = 4, max_len: int = 8, charset: str = DEFAULT_CHARSET):
    """Write ``count`` ImageCaptcha captchas (150x50), labels drawn like ours; deterministic per seed. Returns the path."""
    import captcha.image
    from captcha.image import ImageCaptcha

    writer = ImageCaptcha(width=150, height=50)
    rows = {"bytes": [], "path": [], "text": []}
    for index in tqdm(range(count), desc="third-party captchas", unit="img", leave=False):
        rng = np.random.default_rng([seed, index])
        label = generate_random_string(rng, charset, min_len, max_len)
        captcha.image.secrets = SeededSecrets(f"{seed}-{index}")
        buf = io.BytesIO()
        writer.generate_image(label).save(buf, "PNG")
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
    a = p.parse_args()
    print(f"wrote {write_third_party(a.count, a.output, a.seed)}")


if __name__ == "__main__":
    main()
