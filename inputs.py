"""Reading untrusted inputs: finding parquet files, decoding image bytes.

No torch here, so the data scripts and their worker processes stay light.
"""

import glob
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

Image.MAX_IMAGE_PIXELS = 4_000_000  # captchas are small; anything larger is refused as a decompression bomb


def find_parquet_files(paths: list[str]) -> list[Path]:
    """Expand files, folders (recursively, hidden folders such as caches left out) and globs
    into a sorted list of parquet files."""
    found: set[Path] = set()
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found.update(f for f in path.rglob("*.parquet") if not any(part.startswith(".") for part in f.relative_to(path).parts))
        elif path.is_file():
            found.add(path)
        else:
            found.update(Path(m) for m in glob.glob(p, recursive=True) if m.endswith(".parquet"))
    return sorted(found)


def cache_folder(folder: Path) -> Path:
    """Where the caches of the files in ``folder`` are kept: its ``.cache/``, or, when the
    folder is read-only (a mounted dataset), a folder of the user's ``~/.cache/captcha-ocr/``
    named after it."""
    if os.access(folder, os.W_OK):
        return folder / ".cache"
    return Path.home() / ".cache" / "captcha-ocr" / hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:16]


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by suffix), sorted."""
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def decode_image(data: bytes, channels: int = 3) -> Image.Image:
    """Encoded bytes -> PIL image in the model's colour mode ("RGB" or "L").

    16-bit and palette images are converted through RGB; raises PIL's errors for bytes
    that are not an image and DecompressionBombError for oversized ones.
    """
    img = Image.open(io.BytesIO(data))
    img.load()
    return to_model_mode(img, channels)


def to_model_mode(img: Image.Image, channels: int = 3) -> Image.Image:
    """Any PIL image -> "RGB" (or "L" for ``channels == 1``); 16-bit gray is scaled to 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = Image.fromarray((np.asarray(img, dtype=np.float32) / 256).clip(0, 255).astype(np.uint8))
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")  # palette, alpha, CMYK, ...
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)  # no copy when it is already there


def open_parquet(path: Path) -> pq.ParquetFile:
    """Open a parquet file in the shared schema; ValueError naming the file if it is not
    parquet or lacks the ``image``/``text`` columns."""
    try:
        source = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering holds whole files in memory
    except Exception as err:
        raise ValueError(f"{path}: not a parquet file ({err})") from err
    missing = {"image", "text"} - set(source.schema_arrow.names)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected columns image {{bytes, path}} and text")
    return source
