import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageFont

from captcha_generator import (
    CaptchaStyle,
    all_fonts,
    default_fonts,
    elastic_transform,
    generate_captcha,
    generate_captcha_data,
    generate_random_string,
    render_rows,
    save_grid_image,
    vary,
)
from labels import DEFAULT_CHARSET, parse_label


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    one = generate_captcha_data(60, tmp_path / "one.parquet", seed=7, workers=1, row_group=10)
    two = generate_captcha_data(60, tmp_path / "two.parquet", seed=7, workers=2, row_group=10)
    assert one.read_bytes() == two.read_bytes()
    other = generate_captcha_data(20, tmp_path / "other.parquet", seed=8, workers=1)
    assert pq.read_table(other)["image"][0].as_py() != pq.read_table(one)["image"][0].as_py()


def test_schema_sizes_and_labels(tmp_path):
    style = CaptchaStyle(width=120, height=40, min_len=3, max_len=5, charset="xyz")
    path = generate_captcha_data(30, tmp_path / "g.parquet", seed=0, style=style, workers=1)
    table = pq.read_table(path)
    assert table.column_names == ["image", "text"]
    assert table.schema.field("image").type.names == ["bytes", "path"]
    assert not list(tmp_path.glob("*.tmp"))
    for row in table.to_pylist():
        img = Image.open(io.BytesIO(row["image"]["bytes"]))
        assert img.size == (120, 40) and img.mode == "RGB"
        label = parse_label(row["text"])
        assert 3 <= len(label) <= 5 and set(label) <= set("xyz")


def test_random_string_lengths_cover_the_range():
    rng = np.random.default_rng(0)
    lengths = {len(generate_random_string(rng, "ab", 4, 6)) for _ in range(200)}
    assert lengths == {4, 5, 6}


def test_captcha_draws_text_and_warp_changes_pixels():
    style = CaptchaStyle(spots=0, lines=0, warp=0)
    img = generate_captcha("Ab3", np.random.default_rng(0), style)
    arr = np.asarray(img)
    background = arr[0, 0]
    assert (np.abs(arr.astype(int) - background).sum(axis=2) > 100).mean() > 0.03
    warped = elastic_transform(img, np.random.default_rng(1), alpha=3.0)
    assert warped.size == img.size and not np.array_equal(np.asarray(warped), arr)


def test_warp_keeps_pixels_and_channels_in_place():
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    still = elastic_transform(img, np.random.default_rng(1), alpha=1e-6)  # offsets far below a pixel
    assert np.array_equal(np.asarray(still), pixels)
    flat = Image.new("RGB", (30, 20), (10, 120, 250))
    warped = elastic_transform(flat, np.random.default_rng(2), alpha=3.0)
    assert warped.mode == "RGB" and {tuple(c) for c in np.asarray(warped).reshape(-1, 3)} == {(10, 120, 250)}


def _ink(img: Image.Image) -> np.ndarray:
    """(H, W) bool: pixels far from the top-left (background) colour."""
    arr = np.asarray(img).astype(int)
    return np.abs(arr - arr[0, 0]).sum(axis=2) > 100


def _ink_width(img: Image.Image) -> int:
    columns = np.nonzero(_ink(img).any(axis=0))[0]
    return int(columns[-1] - columns[0] + 1)


def test_stretch_widens_and_condenses_the_glyphs():
    plain = CaptchaStyle(spots=0, lines=0, warp=0, rotation=0)
    widths = {
        s: _ink_width(generate_captcha("Hm", np.random.default_rng(0), CaptchaStyle(**{**plain.__dict__, "stretch": s})))
        for s in (0.5, 1.0, 1.4)
    }
    assert widths[0.5] < 0.7 * widths[1.0] and widths[1.4] > 1.25 * widths[1.0]


def _ink_height(img: Image.Image) -> int:
    rows = np.nonzero(_ink(img).any(axis=1))[0]
    return int(rows[-1] - rows[0] + 1)


def test_fill_height_draws_lowercase_as_tall_as_capitals():
    plain = dict(spots=0, lines=0, warp=0, rotation=0, size_jitter=0.0)
    kept = {ch: _ink_height(generate_captcha(ch * 3, np.random.default_rng(0), CaptchaStyle(**plain))) for ch in "oO"}
    filled = {ch: _ink_height(generate_captcha(ch * 3, np.random.default_rng(0), CaptchaStyle(**plain, fill_height=True))) for ch in "oO"}
    assert kept["o"] < 0.85 * kept["O"]
    assert abs(filled["o"] - filled["O"]) <= 1 and filled["O"] >= kept["O"]


def test_size_jitter_and_overlap_shape_the_text():
    plain = dict(spots=0, lines=0, warp=0, rotation=0)
    heights = {
        j: {
            _ink_height(generate_captcha("H", np.random.default_rng(i), CaptchaStyle(**plain, size_jitter=j, text_size=(0.7, 0.7))))
            for i in range(40)
        }
        for j in (0.0, 0.2)
    }
    assert len(heights[0.0]) == 1 and max(heights[0.2]) - min(heights[0.2]) >= 5
    widths = {o: _ink_width(generate_captcha("HHHH", np.random.default_rng(3), CaptchaStyle(**plain, overlap=o))) for o in (0.0, 0.6)}
    assert widths[0.6] < 0.85 * widths[0.0]


def test_cli_passes_the_look_flags_to_the_style(tmp_path):
    look = ["--fill-height", "--one-colour", "--stretch", "0.7", "--size-jitter", "0.15", "--overlap", "0.3"]
    first = {}
    for name, flags in {"plain": [], "look": look}.items():
        out = tmp_path / f"{name}.parquet"
        cmd = [sys.executable, "captcha_generator.py", "--count", "1", "--seed", "2", "--workers", "1", "--grid", "", "--output", str(out)]
        assert subprocess.run(cmd + flags, cwd=Path(__file__).resolve().parents[1], capture_output=True).returncode == 0
        first[name] = pq.read_table(out)["image"][0].as_py()["bytes"]
    style = CaptchaStyle(fill_height=True, one_colour=True, stretch=0.7, size_jitter=0.15, overlap=0.3)
    assert first["look"] == render_rows(2, 0, 1, style)[0][0] != first["plain"]


def _inks(img: Image.Image) -> list[tuple]:
    """Distinct inks: colours other than the background's filling more than 30 pixels exactly
    (glyph interiors), those within 30 levels of an ink already found counted once."""
    arr = np.asarray(img).reshape(-1, 3).astype(int)
    colours, counts = np.unique(arr, axis=0, return_counts=True)
    inks = []
    for colour in colours[np.argsort(-counts)][: int((counts > 30).sum())]:
        if np.abs(colour - arr[0]).sum() > 30 and all(np.abs(colour - ink).sum() > 30 for ink in inks):
            inks.append(colour)
    return inks


def test_one_colour_draws_text_spots_and_strokes_in_one_ink():
    plain = dict(warp=0, rotation=0, spots=30, lines=2)
    one = generate_captcha("HMWB", np.random.default_rng(1), CaptchaStyle(**plain, one_colour=True))
    many = generate_captcha("HMWB", np.random.default_rng(1), CaptchaStyle(**plain))
    assert len(_inks(one)) == 1 and len(_inks(many)) >= 3


def test_varied_style_draws_a_look_per_captcha_and_repeats_per_seed():
    looks = [vary(CaptchaStyle(), np.random.default_rng(i)) for i in range(300)]
    stretches = [look.stretch for look in looks]
    assert min(stretches) < 0.6 and max(stretches) > 1.25
    assert {look.one_colour for look in looks} == {look.bold for look in looks} == {True, False}
    assert {look.background for look in looks} == {(170, 256), (215, 256)} and not any(look.varied for look in looks)
    varied = CaptchaStyle(varied=True)
    first, again = (generate_captcha("aB3x", np.random.default_rng(4), varied) for _ in range(2))
    assert np.array_equal(np.asarray(first), np.asarray(again))


def test_all_fonts_draw_every_character():
    fonts = all_fonts()
    assert len(fonts) == 21 and set(default_fonts()) < set(fonts)
    for path in fonts:
        font = ImageFont.truetype(path, 20)
        assert all(font.getmask(ch).getbbox() for ch in DEFAULT_CHARSET), path


def test_grid_image(tmp_path):
    out = save_grid_image(tmp_path / "grid.png", n=12)
    assert Image.open(out).size[0] > 500


def test_data_scripts_do_not_load_torch():
    code = "import sys, captcha_generator, make_dataset; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
