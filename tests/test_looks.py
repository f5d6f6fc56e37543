"""The generator's many-style mode (looks.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import looks
from captcha_generator import CaptchaStyle, default_fonts, generate_captcha_data
from labels import parse_label

ROOT = Path(__file__).resolve().parents[1]
FONTS = tuple(default_fonts()[:4])  # a few fonts keep the tests fast; font_pool() is tested on its own


def mixed(**fields) -> CaptchaStyle:
    return CaptchaStyle(mixed=True, fonts=FONTS, min_len=3, **fields)


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    one = generate_captcha_data(40, tmp_path / "one.parquet", seed=3, style=mixed(), workers=1, row_group=10)
    two = generate_captcha_data(40, tmp_path / "two.parquet", seed=3, style=mixed(), workers=2, row_group=10)
    assert one.read_bytes() == two.read_bytes()
    other = generate_captcha_data(10, tmp_path / "other.parquet", seed=4, style=mixed(), workers=1)
    assert pq.read_table(other)["image"][0].as_py() != pq.read_table(one)["image"][0].as_py()


def test_every_look_parameter_stays_inside_its_documented_range():
    fonts = FONTS
    for index in range(400):
        look = looks.sample_look(np.random.default_rng([11, index]), fonts)
        assert set(look) == set(looks.LOOK_RANGES) | {"font"}
        assert look["font"] in fonts
        for name, allowed in looks.LOOK_RANGES.items():
            value = look[name]
            if isinstance(allowed[0], str | bool):
                assert value in allowed, (name, value)
            else:
                assert allowed[0] <= value <= allowed[1], (name, value)


def test_labels_match_the_characters_drawn_in_order(monkeypatch):
    drawn = []
    real = looks._glyph_tile

    def recording(ch, *args):
        drawn.append(ch)
        return real(ch, *args)

    monkeypatch.setattr(looks, "_glyph_tile", recording)
    for index in range(60):
        drawn.clear()
        label, image, look = looks.draw_look(np.random.default_rng([5, index]), FONTS)
        assert "".join(drawn) == label and len(label) == look["length"]
        assert set(label) <= set(looks.ALPHABETS[look["alphabet"]])
        assert image.mode == "RGB" and 75 <= image.width <= 300 and image.height == look["height"]


def test_the_text_is_drawn_large_enough_to_read():
    """Drawn alone in black on white, each label's ink covers a readable share of the canvas:
    the text layer is scaled to fit inside it, never cropped away or shrunk to specks."""
    for index in range(20):
        rng_with, rng_without = np.random.default_rng([9, index]), np.random.default_rng([9, index])
        label, image, look = looks.draw_look(rng_with, FONTS)
        clean = look | {"curves": 0, "arcs": 0, "strike": 0, "dots": 0, "ovals": 0, "grid": False, "warp": "none", "blur": 0.0}
        clean |= {"jpeg": 0, "downscale": 1.0, "background": "flat", "glyph": "fill"}
        img = looks._background(clean, image.size, (255, 255, 255), rng_without)
        looks._paste_text(img, label, clean, (0, 0, 0), (255, 255, 255), rng_without)
        ink = np.asarray(img.convert("L")) < 128  # (h, w)
        rows, columns = ink.any(axis=1).sum(), ink.any(axis=0).sum()
        assert 0.02 < ink.mean() < 0.6, (index, look["font"], ink.mean())
        assert rows >= 0.25 * image.height and columns >= 0.25 * image.width, (index, rows, columns)


def test_lengths_and_characters_follow_the_style():
    style = mixed(charset="0123456789", max_len=5)
    for index in range(40):
        label, _, look = looks.draw_look(np.random.default_rng([1, index]), style.fonts, style.charset, (3, 5))
        assert 3 <= len(label) <= 5 and label.isdigit() and look["alphabet"] != "lower"
    with pytest.raises(ValueError, match="nothing fits"):
        looks.sample_look(np.random.default_rng(0), FONTS, "abc", (9, 12))


def test_the_look_column_traces_each_row_to_what_drew_it(tmp_path):
    path = generate_captcha_data(12, tmp_path / "m.parquet", seed=2, style=mixed(), workers=1)
    table = pq.read_table(path)
    assert table.column_names == ["image", "text", "look"]
    for row in table.to_pylist():
        look = json.loads(row["look"])
        assert len(parse_label(row["text"])) == look["length"] and look["font"] in FONTS


def test_font_pool_holds_only_fonts_that_draw_every_alphanumeric():
    pool = looks.font_pool()
    assert set(default_fonts()) <= set(pool) and len({Path(f).name for f in pool}) == len(pool)
    assert all(looks._covers_alphanumerics(f) for f in pool[:5])
    assert not looks._covers_alphanumerics(str(ROOT / "README.md"))


def test_cli_mixed_flag_writes_the_look_column_and_a_grid(tmp_path):
    out, grid = tmp_path / "m.parquet", tmp_path / "grid.png"
    cmd = [sys.executable, str(ROOT / "captcha_generator.py"), "--mixed", "--min-len", "3", "--count", "6", "--workers", "1"]
    cmd += ["--output", str(out), "--grid", str(grid), "--fonts", *FONTS]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    assert pq.read_table(out).column_names == ["image", "text", "look"] and grid.stat().st_size > 0
