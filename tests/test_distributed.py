"""torchrun with 2 CPU processes (gloo): one run, identical weights, one checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

from checkpoints import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--img-height", "32", "--img-width", "96", "--width-mult", "0.25", "--depth-mult", "0.25", "--head-dim", "32"]


def test_two_process_torchrun_trains_one_model_that_single_process_scripts_load(tiny_parquet, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "main.py")]
    cmd += ["--data", str(tiny_parquet), "--charset", "abc123", "--max-len", "4", *TINY, "--split-ratios", "0.7,0.15,0.15"]
    cmd += ["--epochs", "2", "--batch-size", "8", "--workers", "0", "--run-name", "ddp"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 2/2") == 1  # only rank 0 prints
    assert "replicas agree: 2 processes hold identical weights" in result.stdout
    runs = list((tmp_path / "saved_models").iterdir())
    assert [r.name for r in runs] == ["ddp"] and sorted(p.name for p in runs[0].glob("*.pt")) == ["best.pt", "last.pt"]
    ckpt = load_checkpoint(runs[0] / "last.pt")
    assert not any(k.startswith("module.") for k in ckpt["model"]) and len(ckpt["history"]) == 2
    report = tmp_path / "r.json"
    check = [sys.executable, str(ROOT / "accuracy_calculator.py"), "--checkpoint", str(runs[0] / "last.pt"), "--workers", "0"]
    subprocess.run(check + ["--data", str(tiny_parquet), "--json", str(report)], cwd=tmp_path, check=True, capture_output=True, timeout=300)
    assert json.loads(report.read_text())["case_sensitive"]["n"] == 120
