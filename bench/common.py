"""Shared by the bench scripts: machine description, scoring a checkpoint, cutting a labelled
folder into sets, and process-tree memory sampling."""

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from image_folders import folder_parquet  # noqa: E402


def machine() -> str:
    """The CPU, cores, memory and Python of this machine, and its CUDA GPU if it has one."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python {platform.python_version()}{gpu}"


def device_name(name: str = "auto") -> str:
    """The device a run with ``--device name`` uses, with the GPU's name and memory on CUDA."""
    import torch

    from device import get_device

    device = get_device(name)
    if device.type != "cuda":
        return device.type
    props = torch.cuda.get_device_properties(device)
    return f"cuda: {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"


def accuracy_report(checkpoint: Path, data: Path, json_path: Path) -> dict:
    """Score ``checkpoint`` on every row of ``data`` with accuracy_calculator.py; its JSON report
    (written to ``json_path``, the confusion matrix beside it)."""
    cmd = [sys.executable, str(ROOT / "accuracy_calculator.py"), "--checkpoint", str(checkpoint), "--data", str(data)]
    cmd += ["--json", str(json_path), "--confusion-png", str(json_path.with_suffix(".png"))]
    subprocess.run(cmd, check=True, capture_output=True)
    return json.loads(json_path.read_text())


def folder_cuts(folder: Path, out: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, Path]:
    """A labelled folder of image files (its names or labels.csv label it), shuffled with
    ``seed`` and cut in the order of ``sizes`` into parquet files under ``out``: {name: path}.
    A cut past the end gets what is left, so the last one may be smaller than asked."""
    table = pq.read_table(folder_parquet(folder, cache=out), columns=["image", "text"])
    order = np.random.default_rng(seed).permutation(table.num_rows)
    cuts, start = {}, 0
    for name, size in sizes.items():
        cuts[name] = out / f"{name}.parquet"
        pq.write_table(table.take(order[start : start + size]), cuts[name])
        start += size
    return cuts


def _anon_bytes(pid: int) -> int:
    """RssAnon: the process's anonymous (heap, not file-backed) resident memory."""
    with open(f"/proc/{pid}/status") as f:
        return next((int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:")), 0)


def run_measuring_tree_rss(cmd: list[str], interval: float = 0.1) -> tuple[float, float, float, float, str]:
    """Run ``cmd``; return (seconds, peak RSS, peak PSS, peak anonymous memory, all in MiB, and
    its stdout) for the process plus all its children.

    RSS counts pages shared between forked processes once per process; PSS splits them
    between the sharers, so the PSS sum is the tree's real footprint. Both include pages of
    memory-mapped files that were read; the anonymous sum leaves those out (the page cache
    can drop them at any time).
    """
    out = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out)
    peak = peak_pss = peak_anon = 0
    stop = threading.Event()

    def sample():
        nonlocal peak, peak_pss, peak_anon
        parent = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                tree = [parent, *parent.children(recursive=True)]
                infos = [p.memory_full_info() for p in tree]
                peak = max(peak, sum(i.rss for i in infos))
                peak_pss = max(peak_pss, sum(i.pss for i in infos))
                peak_anon = max(peak_anon, sum(_anon_bytes(p.pid) for p in tree))
            except (psutil.Error, OSError):
                pass
            time.sleep(interval)

    start = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    elapsed = time.perf_counter() - start
    stop.set()
    sampler.join()
    out.seek(0)
    if code:
        raise SystemExit(f"{cmd} failed with exit code {code}")
    return elapsed, peak / 2**20, peak_pss / 2**20, peak_anon / 2**20, out.read()
