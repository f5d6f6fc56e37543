"""Generator throughput: captchas/s writing parquet at default settings on all cores.

python bench/bench_generator.py --count 20000
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import machine

from captcha_generator import generate_captcha_data
from config import HelpFormatter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--count", type=int, default=20000, help="captchas to generate")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="worker processes")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = generate_captcha_data(a.count, Path(tmp) / "bench.parquet", seed=0, workers=a.workers)
        elapsed = time.perf_counter() - start
        size = out.stat().st_size
    print(f"machine: {machine()}")
    rate = a.count / elapsed
    print(
        f"generator: {a.count} captchas with {a.workers} workers in {elapsed:.0f} s = {rate:.0f} captchas/s "
        f"({size / a.count / 1024:.1f} KiB per image)"
    )


if __name__ == "__main__":
    main()
