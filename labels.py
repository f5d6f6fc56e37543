"""Labels: parsing the dataset's `text` column, checking labels and the hash split.

Every script that touches a label goes through this module, so the rule that turns
``The text in this image is 'aB3xY9'`` into ``aB3xY9`` lives in exactly one place.
"""

import hashlib
import re
import string
from pathlib import Path

DEFAULT_CHARSET = string.digits + string.ascii_lowercase + string.ascii_uppercase
SPLITS = ("train", "val", "test")
DEFAULT_LABEL_PATTERN = r"^([^_]+)"  # an image file's name up to its first "_": aB3x.png, aB3x_0017.jpg


def parse_label(text: str | None) -> str:
    """Return the text between the first pair of single quotes, else the stripped text.

    ``None`` gives ``""``; an unmatched quote counts as "no pair" and the whole
    stripped text is returned.
    """
    if text is None:
        return ""
    first = text.find("'")
    if first != -1:
        second = text.find("'", first + 1)
        if second != -1:
            return text[first + 1 : second]
    return text.strip()


def label_from_name(name: str, pattern: str = DEFAULT_LABEL_PATTERN) -> str:
    """The label in file name ``name``: ``pattern``'s first group (or whole match) in the
    name without its suffix; "" where it does not match."""
    match = re.search(pattern, Path(name).stem)
    if not match:
        return ""
    return match.group(1) if match.groups() else match.group(0)


def label_problem(label: str, charset: str, max_len: int) -> str | None:
    """Why ``label`` cannot be trained on ("empty", "too_long", "bad_chars"), or None."""
    if not label:
        return "empty"
    if len(label) > max_len:
        return "too_long"
    if not set(label) <= set(charset):
        return "bad_chars"
    return None


def split_key(image_bytes: bytes) -> float:
    """A number in [0, 1) from a hash of the image bytes: where the image falls in the split."""
    return int.from_bytes(hashlib.blake2b(image_bytes, digest_size=8).digest(), "big") / 2**64


def split_for(key: float, ratios: tuple[float, float, float]) -> str:
    """The split (train/val/test, in proportion to ``ratios``) that ``key`` in [0, 1) falls in."""
    total, edge = sum(ratios), 0.0
    for name, ratio in zip(SPLITS, ratios):
        edge += ratio / total
        if key < edge:
            return name
    return SPLITS[-1]


def split_of(image_bytes: bytes, ratios: tuple[float, float, float]) -> str:
    """Deterministic train/val/test split from a hash of the image bytes.

    Identical images always get the same split, so no image is in two splits.
    """
    return split_for(split_key(image_bytes), ratios)
