"""Interrupted runs, unwritable output, mismatched checkpoints and bad training data."""

import dataclasses
import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import checkpoints
from captcha_generator import SCHEMA
from checkpoints import find_latest_checkpoint, load_checkpoint
from codec import LabelCodec
from config import Config, resumed_config
from data_loader import load_data
from train import Interrupted, train_model
from utils import load_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--img-height", "32", "--img-width", "96", "--width-mult", "0.25", "--depth-mult", "0.25", "--head-dim", "32"]


def loaders_for(config):
    return load_data(config, LabelCodec(config.model.charset, config.model.max_len))


def comparable(history: list[dict]) -> list[dict]:
    return [dict(row, img_per_s=0) for row in history]


@pytest.mark.parametrize("stop_after_steps", [2, 4])  # mid-epoch 1; mid-epoch 2, after a finished epoch
def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights_and_metrics(tiny_config, stop_after_steps):
    straight = dataclasses.replace(tiny_config, epochs=2, run_name="straight", model=dataclasses.replace(tiny_config.model, dropout=0.3))
    reference = load_checkpoint(train_model(straight, loaders_for(straight)) / "last.pt")
    stopped = dataclasses.replace(straight, run_name="stopped")
    with pytest.raises(Interrupted) as info:
        train_model(stopped, loaders_for(stopped), stop_after_steps=stop_after_steps)
    partial = load_checkpoint(info.value.checkpoint)
    assert partial["partial"]["step"] == (stop_after_steps - 1) % 3 + 1 and partial["epoch"] == (stop_after_steps - 1) // 3 - 1
    resumed = dataclasses.replace(stopped, resume=str(info.value.checkpoint))
    final = load_checkpoint(train_model(resumed, loaders_for(resumed)) / "last.pt")
    assert comparable(final["history"]) == comparable(reference["history"])
    for name, tensor in reference["model"].items():
        assert torch.equal(tensor, final["model"][name]), name


def test_a_write_killed_midway_leaves_the_previous_checkpoint_loadable(tiny_config, monkeypatch):
    run = train_model(tiny_config, loaders_for(tiny_config))
    before = load_checkpoint(run / "last.pt")

    written = []

    def dies_while_writing(obj, path):
        Path(path).write_bytes(b"PK\x03\x04 half a zip file")
        written.append(Path(path))
        raise KeyboardInterrupt  # Ctrl-C mid-write (a SIGKILL would leave the temporary file behind)

    monkeypatch.setattr(torch, "save", dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint(run / "last.pt", **before)
    assert written and written[0].parent == run and written[0].name.endswith(".tmp") and not written[0].exists()
    assert torch.equal(load_checkpoint(run / "last.pt")["model"]["queries"], before["model"]["queries"])
    assert find_latest_checkpoint(tiny_config.out_dir).name == "best.pt"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_save_a_resumable_checkpoint(tiny_parquet, tmp_path, sig):
    cmd = [sys.executable, str(ROOT / "main.py"), "--data", str(tiny_parquet), "--charset", "abc123", "--max-len", "4", *TINY]
    cmd += ["--epochs", "500", "--batch-size", "4", "--workers", "0", "--run-name", "r", "--split-ratios", "0.7,0.15,0.15"]
    err = tmp_path / "stderr.txt"
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=open(err, "w"), text=True)
    deadline = time.time() + 120
    while "epoch 1/500" not in err.read_text() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    last = tmp_path / "saved_models" / "r" / "last.pt"
    assert f"training interrupted; resume with: python main.py --resume {Path('saved_models/r/last.pt')}" in err.read_text()
    assert "Traceback" not in err.read_text()
    ckpt = load_checkpoint(last)
    assert ckpt["partial"]["step"] >= 1 or ckpt["epoch"] >= 0
    model, _, config, _ = load_model(last)
    assert config.model.charset == "abc123" and config.epochs == 500


def test_unwritable_or_full_output_is_reported_before_training(tiny_config, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot write checkpoints to"):
        train_model(dataclasses.replace(tiny_config, out_dir=str(blocker)), {})
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    with pytest.raises(OSError, match="MiB free under"):
        train_model(tiny_config, {})


def test_main_reports_an_unwritable_output_folder_without_a_traceback(tiny_parquet, tmp_path):
    (tmp_path / "blocked").write_text("")
    cmd = [sys.executable, str(ROOT / "main.py"), "--data", str(tiny_parquet), "--out-dir", "blocked", *TINY]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "main.py: cannot write checkpoints to blocked" in result.stderr
    assert "Traceback" not in result.stderr


def test_resume_refuses_changed_training_settings_by_name():
    saved = Config.from_flat(dict(charset="abc", img_width=96, epochs=3))
    asked = Config.from_flat(dict(charset="abcd", img_width=160, workers=0, resume="x/last.pt"))
    with pytest.raises(ValueError) as err:
        resumed_config(saved, asked, {"charset", "img_width", "workers", "resume"})
    assert "--charset 'abcd' (checkpoint: 'abc')" in str(err.value) and "--img-width 160 (checkpoint: 96)" in str(err.value)
    merged = resumed_config(saved, Config.from_flat(dict(workers=0, resume="x/last.pt")), {"workers", "resume"})
    assert merged == dataclasses.replace(saved, workers=0, resume="x/last.pt")


def test_resume_refuses_a_flag_given_at_its_default_when_the_checkpoint_differs():
    """--img-width 128 is the default, but the run being resumed trained at 96: that is a change too."""
    saved = Config.from_flat(dict(img_width=96, epochs=3))
    asked = Config.from_flat(dict(resume="x/last.pt"))
    with pytest.raises(ValueError, match=r"--img-width 128 \(checkpoint: 96\)"):
        resumed_config(saved, asked, {"img_width", "resume"})
    assert resumed_config(saved, asked, {"resume", "workers"}).model.img_width == 96  # not given: the checkpoint's


def test_a_checkpoint_whose_weights_do_not_fit_names_the_tensors(tiny_checkpoint, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt["config"]["model"]["charset"] = "abc1234"  # the weights still have the old charset's classes
    torch.save(ckpt, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=r"7 characters\): weights do not fit the model: classifier.1.bias: \(7,\) in the file, \(8,\)"):
        load_model(tmp_path / "odd.pt")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_model(tmp_path / "missing.pt")


def _png(color: str = "white") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (60, 20), color).save(buf, "PNG")
    return buf.getvalue()


def test_bad_rows_at_training_time_are_skipped_and_counted(tiny_parquet, tmp_path, tiny_config):
    good = [dict(r, split="val" if i < 20 else "train") for i, r in enumerate(pq.read_table(tiny_parquet).to_pylist())]
    rows = good + [
        {"image": {"bytes": b"", "path": "empty.png"}, "text": "The text in this image is 'abc'"},
        {"image": {"bytes": _png()[:30], "path": "cut.png"}, "text": "The text in this image is 'abc'"},
        {"image": {"bytes": b"not an image", "path": "junk.png"}, "text": "The text in this image is 'ab1'"},
        {"image": {"bytes": _png(), "path": "long.png"}, "text": "The text in this image is 'abcabc'"},
        {"image": {"bytes": _png(), "path": "alien.png"}, "text": "The text in this image is 'xyz'"},
        {"image": {"bytes": _png(), "path": "blank.png"}, "text": "The text in this image is ''"},
    ]
    rows[len(good) :] = [dict(r, split="train") for r in rows[len(good) :]]
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA.append(pa.field("split", pa.string()))), path)
    config = dataclasses.replace(tiny_config, data=[str(path)], max_steps=0, epochs=1, batch_size=1000)  # one batch: every row
    loaders = loaders_for(config)
    assert loaders["skipped"] == {"too_long": 1, "bad_chars": 1, "empty": 1}
    assert len(loaders["train"].dataset) == len(good) - 20 + 3  # the three unreadable images reach training ...
    history = load_checkpoint(train_model(config, loaders) / "last.pt")["history"]
    assert history[0]["bad_rows"] == 3  # ... where they are skipped and counted


def test_an_empty_dataset_and_missing_columns_are_clear_errors(tmp_path, tiny_config):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.Table.from_pylist([], schema=SCHEMA), empty)
    with pytest.raises(ValueError, match="no trainable rows"):
        loaders_for(dataclasses.replace(tiny_config, data=[str(empty)]))
    no_text = tmp_path / "no_text.parquet"
    pq.write_table(pa.table({"image": [{"bytes": _png(), "path": "a.png"}]}), no_text)
    with pytest.raises(ValueError, match=r"no_text.parquet: missing column\(s\) \['text'\]"):
        loaders_for(dataclasses.replace(tiny_config, data=[str(no_text)]))
