"""Accuracy versus training minutes: one main.py run that saves a snapshot every --every
minutes, each snapshot and the final model scored on the same fresh held-out captchas.

    python bench/bench_accuracy_curve.py --every 10 -- --epochs 14 --default-count 100000

Arguments after ``--`` go to main.py unchanged (they choose the run; its length is set by
--epochs: main.py's --time-limit is off here unless they give one). The
held-out set is --heldout captchas of the default generator style from seed
--heldout-seed, which no training set here uses. A snapshot taken mid-run is read while
the learning rate is still high, so it understates what a run planned for that many
minutes would reach. Writes curve.json and curve.png to --out.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, accuracy_report, machine

from config import HelpFormatter


def score(checkpoint: Path, heldout: Path) -> dict:
    """Case-sensitive and -insensitive sequence accuracy and CER of ``checkpoint`` on ``heldout``,
    and the training minutes the checkpoint records."""
    from checkpoints import load_checkpoint

    report = accuracy_report(checkpoint, heldout, checkpoint.with_name(f"{checkpoint.stem}-heldout.json"))
    sensitive, insensitive = report["case_sensitive"], report["case_insensitive"]
    return {
        "checkpoint": checkpoint.name,
        "minutes": round(load_checkpoint(checkpoint)["train_seconds"] / 60, 1),
        "seq_acc": sensitive["seq_acc"],
        "cer": sensitive["cer"],
        "seq_acc_ci": insensitive["seq_acc"],
        "cer_ci": insensitive["cer"],
    }


def plot(rows: list[dict], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    minutes = [r["minutes"] for r in rows]
    ax.plot(minutes, [100 * r["seq_acc"] for r in rows], marker="o", label="sequence accuracy, case-sensitive")
    ax.plot(minutes, [100 * r["seq_acc_ci"] for r in rows], marker="s", label="sequence accuracy, case-insensitive")
    ax.plot(minutes, [100 * r["cer"] for r in rows], marker="^", label="CER, case-sensitive")
    ax.set_xlabel("training minutes (wall clock)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--every", type=float, default=10.0, help="minutes between snapshots")
    p.add_argument("--heldout", type=int, default=2000, help="held-out captchas scored")
    p.add_argument("--heldout-seed", type=int, default=99, help="generator seed of the held-out captchas")
    p.add_argument("--heldout-data", default="", help="score on this parquet file instead of generating the held-out set")
    p.add_argument("--out", default="saved_models/curve", help="folder for the run, the held-out set, curve.json and curve.png")
    p.add_argument("main_args", nargs=argparse.REMAINDER, help="after --: main.py arguments")
    a = p.parse_args()
    from captcha_generator import generate_captcha_data

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    heldout = Path(a.heldout_data) if a.heldout_data else out / f"heldout-seed{a.heldout_seed}-{a.heldout}.parquet"
    if not heldout.exists():
        generate_captcha_data(a.heldout, heldout, seed=a.heldout_seed)
    run_name = time.strftime("%Y%m%d-%H%M%S")
    main_args = [arg for arg in a.main_args if arg != "--"]
    cmd = [sys.executable, str(ROOT / "main.py"), "--time-limit", "0", *main_args, "--snapshot-minutes", f"{a.every:g}"]
    cmd += ["--out-dir", str(out), "--run-name", run_name]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    run = out / run_name
    snapshots = sorted(run.glob("minutes-*.pt"), key=lambda p: float(p.stem.split("-", 1)[1]))
    rows = [score(c, heldout) for c in [*snapshots, run / "last.pt"]]
    print(f"\nheld-out: {heldout}; run {run}")
    print("checkpoint          minutes  seq acc  CER     seq acc (ci)  CER (ci)")
    for r in rows:
        print(f"{r['checkpoint']:<18}  {r['minutes']:>7}  {r['seq_acc']:>6.1%}  {r['cer']:>6.2%}", end="")
        print(f"  {r['seq_acc_ci']:>11.1%}  {r['cer_ci']:>7.2%}")
    (out / "curve.json").write_text(json.dumps({"command": cmd, "machine": machine(), "rows": rows}, indent=1))
    plot(rows, out / "curve.png")
    print(f"curve: {out / 'curve.png'}\nmachine: {machine()}")


if __name__ == "__main__":
    main()
