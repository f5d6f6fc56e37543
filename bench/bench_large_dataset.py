"""Training on a 1,000,000-row dataset: time to the first step, images/s, and the peak
memory of the whole process tree (main process + DataLoader workers).

    python bench/bench_large_dataset.py --rows 1000000 --steps 200

The dataset is make_dataset-style parquet (image, text, label, split) built by repeating
a generated shard of --unique captchas until it has --rows rows (the memory and start-up
behaviour depend on the row count, not on whether images repeat). The training run is
a child process: load_data (the data cache is built on the first run and reused after),
then train_model for --steps steps; it is run twice, so both the cold start (data cache
built) and the warm start (cache reused) are measured.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import machine, run_measuring_tree_rss

from config import HelpFormatter


def build(path: Path, rows: int, unique: int) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from captcha_generator import generate_captcha_data
    from labels import parse_label, split_of

    shard = generate_captcha_data(unique, path.with_name("shard.parquet"), seed=7)
    table = pq.read_table(shard)
    labels = pa.array([parse_label(t) for t in table["text"].to_pylist()])
    splits = pa.array([split_of(b, (0.9, 0.05, 0.05)) for b in pc.struct_field(table["image"], "bytes").to_pylist()])
    table = table.append_column("label", labels).append_column("split", splits)
    with pq.ParquetWriter(path, table.schema) as writer:
        for start in range(0, rows, unique):
            writer.write_table(table.slice(0, min(unique, rows - start)), row_group_size=1000)


def child(data: str, steps: int, workers: int, out_dir: str) -> None:
    """The measured process: prints seconds to the first batch and the training images/s."""
    start = time.perf_counter()
    import torch

    from checkpoints import load_checkpoint
    from codec import LabelCodec
    from config import Config
    from data_loader import load_data
    from train import train_model

    config = Config(data=[data], epochs=1, max_steps=steps, workers=workers, out_dir=out_dir, run_name=f"run{time.time_ns()}")
    codec = LabelCodec(config.model.charset, config.model.max_len)
    loaders = load_data(config, codec)
    print(f"loaded {len(loaders['train'].dataset)} training rows in {time.perf_counter() - start:.1f} s", flush=True)
    next(iter(loaders["train"]))
    print(f"first training batch ready {time.perf_counter() - start:.1f} s after start", flush=True)
    loaders["val"] = torch.utils.data.DataLoader([], collate_fn=lambda items: (None, None, 0))  # no validation pass
    row = load_checkpoint(train_model(config, loaders) / "last.pt")["history"][0]
    print(f"trained {steps} steps of {config.batch_size}: {row['img_per_s']:.0f} images/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows in the dataset")
    p.add_argument("--unique", type=int, default=20000, help="distinct generated captchas repeated to fill it")
    p.add_argument("--steps", type=int, default=200, help="training steps measured")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return child(a.child, a.steps, a.workers, a.out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "big" / "big.parquet"
        data.parent.mkdir()
        t = time.perf_counter()
        build(data, a.rows, min(a.unique, a.rows))
        print(f"built {a.rows} rows ({data.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t:.0f} s")
        cmd = [sys.executable, __file__, "--child", str(data), "--steps", str(a.steps), "--workers", str(a.workers)]
        for start in ("cold (cache built)", "warm (cache reused)"):
            seconds, rss, pss, anon, out = run_measuring_tree_rss(cmd + ["--out-dir", str(Path(tmp) / "runs")])
            print(f"\n{start}: {seconds:.0f} s in all\n{out.strip()}")
            print(f"process tree peak: anonymous memory {anon:.0f} MiB, PSS {pss:.0f} MiB, RSS sum {rss:.0f} MiB")
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
