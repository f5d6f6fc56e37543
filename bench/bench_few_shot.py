"""Few labelled captchas of a new style: training from scratch vs fine-tuning the
generated-data model vs fine-tuning it on a mix of the small set and generated captchas,
each with the same CPU time budget.

    pip install -r requirements-bench.txt
    python bench/bench_few_shot.py --base saved_models/<run>/best.pt --sizes 500 1000 5000 --minutes 3

The new style is the `captcha` package's ImageCaptcha, or wheezy.captcha's with `--style
wheezy` (bench/third_party_captchas.py); our generator makes neither. For each
training-set size the three methods run main.py with the same number of optimisation
steps (the budget divided by the measured time per step), then accuracy_calculator.py
scores each on the same 2,000 test captchas.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from common import ROOT, accuracy_report, machine
from third_party_captchas import STYLES, write_third_party

from config import HelpFormatter

METHODS = ("scratch", "fine-tune", "mix")
TRAIN_SHARE = 0.9  # of the labelled set; the rest validates


def train(method: str, small: Path, generated: Path, base: str, steps: int, out: Path, batch: int, finetune_lr: float) -> Path:
    """Run main.py for ``steps`` optimisation steps; returns the best checkpoint."""
    rows = pq.read_metadata(small).num_rows
    cmd = [sys.executable, str(ROOT / "main.py"), "--out-dir", str(out), "--run-name", method, "--batch-size", str(batch)]
    cmd += ["--split-ratios", f"{TRAIN_SHARE},{1 - TRAIN_SHARE:g},0", "--augment", "on", "--workers", "2"]
    if method == "fine-tune":
        cmd += ["--init-from", base, "--data", str(small), "--lr", str(finetune_lr)]
    elif method == "mix":  # fine-tune on the small set and generated captchas half and half
        cmd += ["--init-from", base, "--data", str(small), str(generated), "--mix", "0.5,0.5", "--lr", str(finetune_lr)]
    else:
        cmd += ["--data", str(small)]
    per_epoch = max(1, int(rows * TRAIN_SHARE) // batch)  # a mix epoch is cut to the same length (--max-steps)
    epochs = max(1, round(steps / per_epoch))
    cmd += ["--epochs", str(epochs), "--max-steps", str(per_epoch), "--time-limit", "0"]  # the steps are the budget
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{method} cell failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
    return out / method / "best.pt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--base", required=True, help="the generated-data checkpoint to fine-tune (python main.py)")
    p.add_argument("--generated", default="data/generated.parquet", help="generated captchas for the mix")
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 5000], help="labelled training-set sizes")
    p.add_argument("--test", type=int, default=2000, help="test captchas of the new style")
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per cell")
    p.add_argument("--images-per-s", type=float, default=210.0, help="measured training speed, to turn minutes into steps")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument("--finetune-lr", type=float, default=3e-3, help="peak learning rate of the fine-tune and mix cells (main.py's default)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="which methods to run")
    p.add_argument("--style", choices=STYLES, default="imagecaptcha", help="the new style (third_party_captchas.py)")
    a = p.parse_args()
    steps = max(1, int(a.minutes * 60 * a.images_per_s / a.batch_size))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        test = write_third_party(a.test, tmp / "test" / "test.parquet", seed=1001, style=a.style)
        for size in a.sizes:
            small = write_third_party(size, tmp / f"train{size}" / "train.parquet", seed=2000 + size, style=a.style)
            for method in a.methods:
                start = time.perf_counter()
                best = train(method, small, Path(a.generated), a.base, steps, tmp / f"runs{size}", a.batch_size, a.finetune_lr)
                minutes = (time.perf_counter() - start) / 60
                rows.append((size, method, minutes, accuracy_report(best, test, tmp / f"{size}-{method}.json")["case_sensitive"]))
                print(f"{size} {method}: {rows[-1][3]['seq_acc']:.2%} in {minutes:.1f} min", flush=True)
    print(f"\nmachine: {machine()}; {steps} steps of {a.batch_size} per cell, fine-tuning lr {a.finetune_lr:g}")
    print(f"test: {a.test} {a.style} captchas\n")
    print("| labelled images | method | minutes | seq acc | CER |")
    print("|---|---|---|---|---|")
    for size, method, minutes, r in rows:
        print(f"| {size} | {method} | {minutes:.1f} | {r['seq_acc']:.2%} | {r['cer']:.2%} |")


if __name__ == "__main__":
    main()
