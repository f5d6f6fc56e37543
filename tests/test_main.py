import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--img-height", "32", "--img-width", "96", "--width-mult", "0.25", "--depth-mult", "0.25", "--head-dim", "32"]


def test_main_generates_default_data_when_data_is_empty_then_trains(tmp_path):
    cmd = [sys.executable, str(ROOT / "main.py"), "--default-count", "150", "--epochs", "1", "--max-steps", "2", "--batch-size", "8"]
    result = subprocess.run(cmd + TINY + ["--workers", "1", "--run-name", "r"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "note: no parquet file in data/; generating 150 captchas" in result.stdout
    assert pq.read_metadata(tmp_path / "data" / "generated.parquet").num_rows == 150
    run = tmp_path / "saved_models" / "r"
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png", "predictions.png"):
        assert (run / name).exists(), name
    assert "epoch 1/1" in result.stdout and "predictions:" in result.stdout
    assert "confidences calibrated on the validation split" in result.stdout
    assert all(torch.load(run / name, weights_only=True)["temperature"] > 0 for name in ("best.pt", "last.pt"))


def test_main_help_lists_every_knob():
    out = subprocess.run([sys.executable, str(ROOT / "main.py"), "--help"], capture_output=True, text=True, check=True).stdout
    flags = ("--data", "--charset", "--max-len", "--img-width", "--variant", "--pretrained-weights", "--pretrain-epochs", "--resume")
    assert all(flag in out for flag in flags)
    assert "training epochs (default: 8)" in " ".join(out.split())  # every knob shows its default
    assert "(default: data)" in out and "(default: '')" in out


def test_main_names_a_file_that_is_not_parquet(tmp_path):
    (tmp_path / "junk.parquet").write_text("not parquet")
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--data", "junk.parquet"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode != 0
    assert "junk.parquet: not a parquet file" in result.stderr and "Traceback" not in result.stderr


def test_main_finishes_when_the_validation_split_is_empty(tmp_path, tiny_parquet):
    cmd = [sys.executable, str(ROOT / "main.py"), "--data", str(tiny_parquet), "--split-ratios", "1,0,0", "--charset", "abc123"]
    cmd += ["--max-len", "4", "--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--workers", "0", "--run-name", "r"]
    result = subprocess.run(cmd + TINY, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "val: 0 rows" in result.stdout and "predictions: none (no validation images)" in result.stdout
    assert (tmp_path / "saved_models" / "r" / "best.pt").exists()


def test_main_refuses_a_setting_outside_its_choices():
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--augment", "yes"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice: 'yes'" in result.stderr
