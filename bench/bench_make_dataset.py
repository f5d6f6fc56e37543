"""make_dataset throughput and peak memory on a large input.

Generates one shard, then feeds it --copies times (as separate files) to make_dataset.py in
a subprocess, sampling the RSS of its whole process tree.

    python bench/bench_make_dataset.py --rows 60000 --copies 5     # ~2.4 GB of input
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from common import machine, run_measuring_tree_rss

from captcha_generator import generate_captcha_data
from config import HelpFormatter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--rows", type=int, default=60000, help="rows in the generated shard")
    p.add_argument("--copies", type=int, default=5, help="how many copies of the shard are combined")
    p.add_argument("--workers", type=int, default=1, help="make_dataset worker processes")
    p.add_argument("--shard", default="", help="reuse this parquet shard instead of generating one")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shard = Path(a.shard) if a.shard else generate_captcha_data(a.rows, tmp / "shard.parquet", seed=0)
        inputs = []
        for i in range(a.copies):
            inputs.append(tmp / "in" / f"shard-{i:02d}.parquet")
            inputs[-1].parent.mkdir(exist_ok=True)
            shutil.copyfile(shard, inputs[-1])
        total = sum(f.stat().st_size for f in inputs)
        cmd = [sys.executable, "make_dataset.py", str(tmp / "in"), "--output", str(tmp / "out.parquet"), "--workers", str(a.workers)]
        seconds, peak_rss, peak_pss, _, _ = run_measuring_tree_rss(cmd)
    print(f"machine: {machine()}")
    print(
        f"make_dataset: {total / 2**30:.2f} GiB in {len(inputs)} files in {seconds:.1f} s = {total / 2**20 / seconds:.1f} MiB/s, "
        f"process tree peak PSS {peak_pss:.0f} MiB (RSS sum {peak_rss:.0f} MiB), {a.workers} workers"
    )


if __name__ == "__main__":
    main()
