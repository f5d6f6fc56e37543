"""Few labelled captchas of a new style, and as many unlabelled ones as a user can collect:
each method gets the same CPU minutes (main.py --time-limit) and is scored on the same
2,000 test captchas of that style.

    pip install -r requirements-bench.txt
    python bench/bench_few_shot.py --base pretrained/general.pt --style wheezy --sizes 1000 --unlabelled 20000 --minutes 30

Methods, each started from --base except scratch:
  scratch     the labelled captchas alone, from random weights
  fine-tune   the labelled captchas
  ema         fine-tune with --ema: best.pt takes the weights' moving average where it validates better
  mix         the labelled captchas and --generated ones, half and half
  semi        the labelled captchas plus N unlabelled ones (--unlabelled N ...): an EMA
              teacher's confident answers on them are learnt on a strong view
  ceiling     the labelled and the N unlabelled captchas, all with their labels
  ignore-case fine-tune with --ignore-case (scored case-insensitively, like the others' ci columns)
  review      the labelling loop: fine-tune on half the labelled captchas, let test.py --review
              pick the other half from the largest pool (the ones that model is least sure of,
              labelled with their true labels as a person would), fine-tune on both halves

The styles are third-party renderers our generator neither imitates nor samples from
(bench/third_party_captchas.py); --folder takes a labelled folder of a real site's captchas
instead, shuffled and cut into the test, labelled and unlabelled sets:

    python bench/bench_few_shot.py --base pretrained/general.pt --folder site/ --test 2000 --sizes 1000 --unlabelled 2000
"""

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from common import ROOT, accuracy_report, folder_cuts, machine
from third_party_captchas import STYLES, write_third_party

from config import HelpFormatter

METHODS = ("scratch", "fine-tune", "ema", "mix", "semi", "ceiling", "ignore-case", "review")
POOL_METHODS = {"semi", "ceiling", "review"}
TRAIN_SHARE = 0.9  # of the labelled set; the rest validates


def train(cmd_tail: list[str], name: str, out: Path, minutes: float, batch: int, epochs: int) -> tuple[Path, float]:
    """Run main.py for ``minutes`` (its --time-limit plans the schedule to fit); returns
    (the best checkpoint, the minutes it took)."""
    cmd = [sys.executable, str(ROOT / "main.py"), "--out-dir", str(out), "--run-name", name, "--batch-size", str(batch)]
    cmd += ["--split-ratios", f"{TRAIN_SHARE},{1 - TRAIN_SHARE:g},0", "--augment", "on", "--workers", "2"]
    cmd += ["--epochs", str(epochs), "--time-limit", f"{minutes:g}", *cmd_tail]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{name} cell failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
    (out / name / "stdout.txt").write_text(done.stdout)
    return out / name / "best.pt", (time.perf_counter() - start) / 60


def cells(a, labelled: Path, pools: dict[int, Path]) -> list[tuple[str, list[str]]]:
    """(name, main.py arguments) of every cell for one labelled set."""
    tune = ["--init-from", a.base, "--lr", str(a.finetune_lr)]
    out = []
    for method in a.methods:
        if method == "scratch":
            out.append(("scratch", ["--data", str(labelled)]))
        elif method == "fine-tune":
            out.append(("fine-tune", [*tune, "--data", str(labelled)]))
        elif method == "ema":
            out.append(("ema", [*tune, "--data", str(labelled), "--ema"]))
        elif method == "ignore-case":
            out.append(("ignore-case", [*tune, "--data", str(labelled), "--ignore-case"]))
        elif method == "review":
            continue  # review_cell: it needs a model trained first
        elif method == "mix":
            out.append(("mix", [*tune, "--data", str(labelled), a.generated, "--mix", "0.5,0.5"]))
        else:
            for n, pool in pools.items():
                if method == "semi":
                    out.append((f"semi+{n}", [*tune, "--data", str(labelled), "--unlabelled", str(pool)]))
                else:  # the same captchas, all labelled
                    tables = [pq.read_table(f, columns=["image", "text"]) for f in (labelled, pool)]
                    out.append((f"ceiling+{n}", [*tune, "--data", str(concat_tables(tables, pool.with_name(f"all{n}.parquet")))]))
    return out


def review_cell(a, labelled: Path, pool: Path, out: Path) -> tuple[list[str], float]:
    """The review method's main.py arguments and the minutes spent choosing: half of
    ``labelled`` trains a model, test.py --review picks as many captchas of ``pool`` as it is
    least sure of, and they join that half with their true labels."""
    table = pq.read_table(labelled, columns=["image", "text"])
    first_half = table.slice(0, len(table) // 2)
    half = concat_tables([first_half], out / "half.parquet")
    start = time.perf_counter()
    tune = ["--init-from", a.base, "--lr", str(a.finetune_lr)]
    chooser, _ = train([*tune, "--data", str(half)], "review-chooser", out, a.minutes, a.batch_size, a.epochs)
    rows = pq.read_metadata(pool).num_rows
    cmd = [sys.executable, str(ROOT / "test.py"), "--checkpoint", str(chooser), "--parquet", str(pool), "--rows", str(rows)]
    cmd += ["--review", str(len(table) - len(first_half)), "--review-dir", str(out / "to_label"), "--quiet", "--grid", ""]
    subprocess.run(cmd, check=True, capture_output=True)
    chosen = [int(re.search(r"_(\d+)\.\w+$", r["file"]).group(1)) for r in csv.DictReader(open(out / "to_label" / "labels.csv"))]
    pool_table = pq.read_table(pool, columns=["image", "text"])
    both = concat_tables([first_half, pool_table.take(chosen)], out / "reviewed.parquet")
    return [*tune, "--data", str(both)], (time.perf_counter() - start) / 60


def data_sets(a, tmp: Path) -> tuple[Path, dict[int, Path], dict[int, Path]]:
    """(test set, {size: unlabelled pool}, {size: labelled set}) of --style's renderer (fresh
    draws, each with a seed of its own) or of --folder (one shuffle cut into test, labelled
    and pool captchas; smaller sets are the first rows of the largest, and a pool the folder
    cannot fill is what is left). Pools only for the methods that read one."""
    pool_sizes = a.unlabelled if POOL_METHODS & set(a.methods) else []
    if not a.folder:
        test = write_third_party(a.test, tmp / "test" / "test.parquet", seed=1001, style=a.style)
        pools = {n: write_third_party(n, tmp / f"pool{n}" / "pool.parquet", seed=5000 + n, style=a.style) for n in pool_sizes}
        labelled = {n: write_third_party(n, tmp / f"train{n}" / "train.parquet", seed=2000 + n, style=a.style) for n in a.sizes}
        return test, pools, labelled
    sizes = {"test": a.test, "labelled": max(a.sizes), "pool": max(pool_sizes, default=0)}
    cuts = folder_cuts(Path(a.folder), tmp / "folder", sizes)

    tables = {name: pq.read_table(cuts[name]) for name in ("labelled", "pool")}

    def first(name: str, n: int) -> Path:
        return concat_tables([tables[name].slice(0, n)], tmp / f"{name}{n}" / f"{name}.parquet")

    pool_rows = tables["pool"].num_rows
    return cuts["test"], {min(n, pool_rows): first("pool", n) for n in pool_sizes}, {n: first("labelled", n) for n in a.sizes}


def concat_tables(tables: list[pa.Table], output: Path) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(tables), output)
    return output


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--base", required=True, help="the checkpoint to fine-tune")
    p.add_argument("--generated", default="data/generated.parquet", help="generated captchas for the mix method")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000], help="labelled training-set sizes")
    p.add_argument("--unlabelled", type=int, nargs="+", default=[20000], help="unlabelled pool sizes of the semi and ceiling methods")
    p.add_argument("--test", type=int, default=2000, help="test captchas of the new style")
    p.add_argument("--minutes", type=float, default=30.0, help="CPU minutes per cell (main.py --time-limit)")
    p.add_argument("--batch-size", type=int, default=32, help="labelled images per step")
    p.add_argument("--epochs", type=int, default=1000, help="most epochs per cell: the time limit decides (lower it for smoke runs)")
    p.add_argument("--finetune-lr", type=float, default=3e-3, help="peak learning rate of the fine-tuning methods")
    p.add_argument("--methods", nargs="+", default=["fine-tune", "semi"], choices=METHODS, help="which methods to run")
    p.add_argument("--style", choices=STYLES, default="wheezy", help="the new style (third_party_captchas.py)")
    p.add_argument("--folder", default=None, help="a labelled folder of a site's captchas instead of --style, cut into the sets")
    p.add_argument("--json", default=None, help="also write the rows here")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        test, pools, labelled_sets = data_sets(a, tmp)
        test_rows = pq.read_metadata(test).num_rows
        for size, labelled in labelled_sets.items():
            todo = cells(a, labelled, pools)
            chose_minutes = 0.0
            if "review" in a.methods:
                args, chose_minutes = review_cell(a, labelled, pools[max(pools)], tmp / f"review{size}")
                todo.append(("review", args))
            for name, args in todo:
                best, minutes = train(args, name, tmp / f"runs{size}", a.minutes, a.batch_size, a.epochs)
                minutes += chose_minutes if name == "review" else 0.0
                report = accuracy_report(best, test, tmp / f"{size}-{name}.json")
                rows.append({"labelled": size, "method": name, "minutes": round(minutes, 1)} | _figures(report))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\nmachine: {machine()}; {a.minutes:g} minutes per cell, batch {a.batch_size}, fine-tuning lr {a.finetune_lr:g}")
    print(f"base: {a.base}; test: {test_rows} {a.folder or a.style} captchas\n")
    print("| labelled | method | minutes | seq acc (case-insensitive) | seq acc | CER (case-insensitive) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['labelled']} | {r['method']} | {r['minutes']} | {r['ci_seq_acc']:.2%} | {r['seq_acc']:.2%} | {r['ci_cer']:.2%} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


def _figures(report: dict) -> dict:
    cs, ci = report["case_sensitive"], report["case_insensitive"]
    return {"seq_acc": cs["seq_acc"], "cer": cs["cer"], "ci_seq_acc": ci["seq_acc"], "ci_cer": ci["cer"]}


if __name__ == "__main__":
    main()
