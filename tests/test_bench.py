"""Each bench script runs on a tiny setting (the figures come from running them in full)."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_bench_generator_runs():
    out = run("bench/bench_generator.py", "--count", "40", "--workers", "2")
    assert "machine:" in out and "captchas/s" in out


def test_bench_make_dataset_runs():
    out = run("bench/bench_make_dataset.py", "--rows", "40", "--copies", "2", "--workers", "1")
    assert "MiB/s" in out and "peak PSS" in out


def test_bench_preprocess_times_every_stage():
    out = run("bench/bench_preprocess.py", "--images", "8", "--repeats", "1", "--batch-size", "4")
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    assert len(rows) >= 7 and all(float(r.split("|")[2]) > 0 for r in rows)
    assert any(r.startswith("| SquarePadAndResize") for r in rows) and any(r.startswith("| answers from logits") for r in rows)


def test_bench_inference_runs(tiny_checkpoint):
    out = run("bench/bench_inference.py", "--checkpoint", str(tiny_checkpoint), "--images", "8", "--no-ddddocr")
    for engine in ("PyTorch eager", "onnxruntime float32", "onnxruntime int8 (dynamic)"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {engine} |"))
        assert float(row.split("|")[5]) > 0  # images/s in the model alone, measured for our engines


def test_bench_large_dataset_runs():
    out = run("bench/bench_large_dataset.py", "--rows", "300", "--unique", "100", "--steps", "2", "--workers", "1")
    assert out.count("first training batch ready") == 2 and "images/s" in out and "anonymous memory" in out


def test_third_party_captchas_are_in_the_shared_schema(tmp_path):

    from captcha_generator import SCHEMA, default_fonts
    from labels import parse_label

    fonts = ["--fonts", *default_fonts()[:2]]  # any TrueType files; Debian's Liberation fonts may be missing
    for style, size in (("imagecaptcha", (150, 50)), ("wheezy", (200, 60)), ("multicolor", (256, 144))):
        for name in ("tp.parquet", "again.parquet"):
            run("bench/third_party_captchas.py", "--style", style, *fonts, "--count", "5", "--output", str(tmp_path / name), "--seed", "3")
        table = pq.read_table(tmp_path / "tp.parquet")
        assert table.schema.equals(SCHEMA) and table.num_rows == 5
        assert table.equals(pq.read_table(tmp_path / "again.parquet"))  # a seed gives the same captchas
        assert all(4 <= len(parse_label(t)) <= 8 and parse_label(t).isalnum() for t in table["text"].to_pylist())
        assert Image.open(io.BytesIO(table["image"][0].as_py()["bytes"])).size == size


def make_base(tiny_parquet: Path, tmp_path: Path, output: Path) -> Path:
    """A one-step base of the full charset for the few-label bench to fine-tune."""
    from conftest import make_tiny_config

    from codec import LabelCodec
    from data_loader import load_data
    from labels import DEFAULT_CHARSET
    from train import train_model

    config = make_tiny_config(tiny_parquet, tmp_path, charset=DEFAULT_CHARSET, max_len=8, epochs=1, max_steps=1)
    shutil.copy(train_model(config, load_data(config, LabelCodec(config.model.charset, config.model.max_len))) / "best.pt", output)
    return output


def test_bench_few_shot_runs(tiny_parquet, tmp_path):
    base = make_base(tiny_parquet, tmp_path, tmp_path / "base.pt")
    out = run(
        "bench/bench_few_shot.py", "--base", str(base), "--generated", str(tiny_parquet), "--sizes", "30", "--test", "10",
        "--unlabelled", "20", "--methods", "semi", "ceiling", "ignore-case", "review", "--minutes", "0.01", "--epochs", "1",
        "--batch-size", "8", "--style", "imagecaptcha",
    )  # fmt: skip
    for method in ("semi+20", "ceiling+20", "ignore-case", "review"):
        assert f"| 30 | {method} |" in out


def site_folder(rows: list[dict], folder: Path) -> Path:
    """``rows`` of the shared schema as a folder of image files named after their labels."""
    from labels import parse_label

    folder.mkdir()
    for i, row in enumerate(rows):
        (folder / f"{parse_label(row['text'])}_{i}.png").write_bytes(row["image"]["bytes"])
    return folder


def test_a_labelled_folder_is_cut_into_disjoint_sets_and_benched(tiny_parquet, tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from common import folder_cuts

    rows = pq.read_table(tiny_parquet).to_pylist()
    folder = site_folder(rows, tmp_path / "site")
    cuts = folder_cuts(folder, tmp_path / "cuts", {"test": 10, "labelled": 20, "pool": 1000})
    sets = {name: pq.read_table(path).to_pylist() for name, path in cuts.items()}
    assert [len(sets[n]) for n in ("test", "labelled", "pool")] == [10, 20, len(rows) - 30]
    names = [r["image"]["path"] for cut in sets.values() for r in cut]
    assert len(set(names)) == len(rows) and all(r["image"]["path"].startswith(f"{r['text']}_") for cut in sets.values() for r in cut)
    again = folder_cuts(folder, tmp_path / "again", {"test": 10, "labelled": 20, "pool": 1000})
    assert pq.read_table(again["test"]).equals(pq.read_table(cuts["test"]))  # the same shuffle every time
    assert not (folder / ".cache").exists()  # the user's folder is left as it was
    base = tmp_path / "base.pt"
    make_base(tiny_parquet, tmp_path, base)
    out = run(
        "bench/bench_few_shot.py", "--base", str(base), "--folder", str(folder), "--sizes", "20", "--test", "10",
        "--unlabelled", "1000", "--methods", "fine-tune", "ema", "semi", "--minutes", "0.01", "--epochs", "1", "--batch-size", "8",
    )  # fmt: skip
    assert f"| 20 | semi+{len(rows) - 30} |" in out and "| 20 | fine-tune |" in out and "| 20 | ema |" in out and "test: 10 " in out


def test_bench_accuracy_curve_scores_each_snapshot(tiny_parquet, tmp_path):
    tiny = ["--data", str(tiny_parquet), "--charset", "abc123", "--max-len", "4", "--img-height", "32", "--img-width", "96"]
    tiny += ["--width-mult", "0.25", "--depth-mult", "0.25", "--epochs", "1", "--max-steps", "3", "--batch-size", "8", "--workers", "0"]
    curve = ["--every", "0.0001", "--heldout-data", str(tiny_parquet), "--out", str(tmp_path)]
    out = run("bench/bench_accuracy_curve.py", *curve, "--", *tiny)
    rows = json.loads((tmp_path / "curve.json").read_text())["rows"]
    assert [r["checkpoint"] for r in rows][-1] == "last.pt" and len(rows) >= 2
    assert all(0 <= r["seq_acc"] <= r["seq_acc_ci"] <= 1 for r in rows)
    assert [r["minutes"] for r in rows] == sorted(r["minutes"] for r in rows)
    assert (tmp_path / "curve.png").stat().st_size > 0 and "minutes-" in out


def test_bench_training_loop_runs(tmp_path):
    figures = tmp_path / "loop.json"
    out = run(
        "bench/bench_training_loop.py",
        "--steps",
        "2",
        "--rows",
        "60",
        "--batch-size",
        "8",
        "--workers",
        "2",
        "--amp",
        "--json",
        str(figures),
    )
    loops = ("bare PyTorch loop", "bare PyTorch loop, autocast", "train_step on the in-memory batch", "train_model (main.py)")
    loops += ("DataLoader alone, 2 workers",)
    loops += ("DataLoader alone, 1 worker", "DataLoader alone, 1 worker, augmentation on")
    assert all(f"| {loop}" in out for loop in loops)
    written = json.loads(figures.read_text())
    assert written["config"]["amp"] and written["config"]["workers"] == 2 and written["config"]["batch_size"] == 8
    assert all(written["images_per_s"][k] > 0 for k in ("bare", "amp", "train_step", "train_model", "loader", "loader_1_worker"))


def test_gpu_check_script_runs_both_steps_on_a_tiny_setting(tmp_path):
    env = {**os.environ, "LOOP_STEPS": "2", "LOOP_ROWS": "60", "HELDOUT": "16", "PYTHON": sys.executable}
    cmd = ["bash", "bench/gpu_check.sh", str(tmp_path), "0.001", "120", "8"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-2000:]
    assert "| train_model (main.py)" in (tmp_path / "loop.log").read_text()
    assert "epochs sized to ~0.001 min: 1" in result.stdout  # at most 1 epoch fits 0.06 s
    rows = json.loads((tmp_path / "curve.json").read_text())["rows"]
    assert rows[-1]["checkpoint"] == "last.pt" and (tmp_path / "curve.png").stat().st_size > 0
    assert "heldout-seed99-16.parquet" in result.stdout  # HELDOUT sized the held-out set


def test_bench_constraints_reads_with_and_without_the_site_constraints(tiny_checkpoint, tmp_path):
    rows = tmp_path / "rows.json"
    args = ("--checkpoint", str(tiny_checkpoint), "--charset", "123", "--length", "3", "--count", "12", "--json", str(rows))
    out = run("bench/bench_constraints.py", *args)
    assert "| as trained |" in out and "| constrained |" in out
    assert [r["decoding"] for r in json.loads(rows.read_text())] == ["as trained", "constrained"]


def test_bench_constraints_reads_a_labelled_folder_whole(tiny_checkpoint, tiny_parquet, tmp_path):
    folder = site_folder(pq.read_table(tiny_parquet).to_pylist()[:12], tmp_path / "site")
    rows = tmp_path / "rows.json"
    args = ("--checkpoint", str(tiny_checkpoint), "--folder", str(folder), "--charset", "abc123", "--length", "4", "--json", str(rows))
    out = run("bench/bench_constraints.py", *args)
    read = json.loads(rows.read_text())
    assert [r["decoding"] for r in read] == ["as trained", "constrained"] and not (folder / ".cache").exists()
    assert f"; {folder} of 4 characters" in out
