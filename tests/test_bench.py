"""Each bench script runs on a tiny setting (the figures come from running them in full)."""

import subprocess
import sys
from pathlib import Path

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


def test_bench_inference_runs(tiny_checkpoint):
    out = run("bench/bench_inference.py", "--checkpoint", str(tiny_checkpoint), "--images", "8", "--no-ddddocr")
    for engine in ("PyTorch eager", "onnxruntime float32", "onnxruntime int8 (dynamic)"):
        assert f"| {engine} |" in out


def test_bench_large_dataset_runs():
    out = run("bench/bench_large_dataset.py", "--rows", "300", "--unique", "100", "--steps", "2", "--workers", "1")
    assert out.count("first training batch ready") == 2 and "images/s" in out and "anonymous memory" in out
