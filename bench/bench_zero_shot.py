"""Zero-shot: how much of a captcha style that nobody trained on each reader gets right.

Third-party renderers from PyPI draw the test captchas (bench/third_party_captchas.py): the
`captcha` package's ImageCaptcha, wheezy.captcha, claptcha and multicolorcaptcha. Our
generator neither imitates nor samples from any of them. Each of our checkpoints is scored
with accuracy_calculator.py (also its calibration: ECE, and coverage and accuracy at
confidence 0.9 and 0.95); the ready-made readers ddddocr (DdddOcr(beta=True)) and
captcha-whisperer read the same PNG bytes one at a time. ``--folders`` adds labelled folders
of real sites' captchas (labels from the file names, as main.py reads them), each read whole.

    pip install -r requirements-bench.txt
    python bench/bench_zero_shot.py --checkpoint base/general.pt saved_models/<run>/best.pt --count 2000
    python bench/bench_zero_shot.py --checkpoint pretrained/general.pt --styles --folders site_a/ site_b/
"""

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from common import accuracy_report, machine
from third_party_captchas import STYLES, write_third_party

from config import HelpFormatter
from image_folders import folder_parquet
from labels import parse_label
from metrics import sequence_metrics


def peers() -> dict:
    """name -> read(PNG bytes) -> text, for the ready-made readers that are installed."""
    readers = {}
    try:
        import ddddocr

        readers["ddddocr 1.6.1 (beta)"] = ddddocr.DdddOcr(beta=True, show_ad=False).classification
    except ImportError:
        print("ddddocr not installed (pip install -r requirements-bench.txt): skipped")
    try:
        from captcha_whisperer import CaptchaRecognizer

        whisperer = CaptchaRecognizer()
        readers["captcha-whisperer 0.1.0"] = lambda data: whisperer.recognize_bytes(data)["text"]
    except ImportError:
        print("captcha-whisperer not installed (pip install -r requirements-bench.txt): skipped")
    return readers


def score_peer(read, data: Path) -> dict:
    """One reader on every row of ``data``: sequence accuracy and CER both ways, images/s."""
    rows = pq.read_table(data, columns=["image", "text"]).to_pylist()
    labels = [parse_label(r["text"]) for r in rows]
    start = time.perf_counter()
    predictions = [str(read(r["image"]["bytes"])) for r in rows]
    seconds = time.perf_counter() - start
    return {
        "case_sensitive": sequence_metrics(predictions, labels),
        "case_insensitive": sequence_metrics(predictions, labels, ignore_case=True),
        "images_per_s": len(rows) / seconds,
    }


def coverage_at(report: dict, threshold: float) -> str:
    row = next(r for r in report["coverage"] if abs(r["threshold"] - threshold) < 1e-9)
    accuracy = "-" if row["seq_acc"] is None else f"{row['seq_acc']:.0%}"
    return f"{row['coverage']:.0%} / {accuracy}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", nargs="+", default=[], help="our checkpoints to score")
    p.add_argument("--styles", nargs="*", default=list(STYLES), choices=STYLES, help="third-party renderers (none: give no names)")
    p.add_argument("--folders", nargs="*", default=[], help="labelled folders of image files, each read whole")
    p.add_argument("--count", type=int, default=2000, help="test captchas per style")
    p.add_argument("--seed", type=int, default=1001, help="seed of the test captchas")
    p.add_argument("--no-peers", action="store_true", help="skip ddddocr and captcha-whisperer")
    a = p.parse_args()
    readers = {} if a.no_peers else peers()
    results = []  # (style, reader, report)
    with tempfile.TemporaryDirectory() as tmp:
        sets = {style: write_third_party(a.count, Path(tmp) / f"{style}.parquet", seed=a.seed, style=style) for style in a.styles}
        for folder in map(Path, a.folders):
            sets[folder.name] = folder_parquet(folder, cache=Path(tmp) / folder.name)
        for style, data in sets.items():
            for checkpoint in a.checkpoint:
                report = accuracy_report(Path(checkpoint), data, Path(tmp) / f"{style}-{Path(checkpoint).parent.name}.json")
                results.append((style, checkpoint, report))
                print(f"{style} {checkpoint}: {report['case_insensitive']['seq_acc']:.2%} case-insensitive", flush=True)
            for name, read in readers.items():
                results.append((style, name, score_peer(read, data)))
                print(f"{style} {name}: {results[-1][2]['case_insensitive']['seq_acc']:.2%} case-insensitive", flush=True)
    print(f"\nmachine: {machine()}; {a.count} captchas per style, seed {a.seed}; folders read whole\n")
    print(
        "| style | reader | seq acc (case-insensitive) | seq acc | CER (case-insensitive) | images/s | ECE | coverage / accuracy at 0.9 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for style, reader, r in results:
        ci, cs = r["case_insensitive"], r["case_sensitive"]
        ece = f"{r['calibration']['ece']:.1%}" if "calibration" in r else "-"
        cover = coverage_at(r, 0.9) if "coverage" in r else "-"
        speed = f"{r['images_per_s']:.0f}"
        print(f"| {style} | {reader} | {ci['seq_acc']:.2%} | {cs['seq_acc']:.2%} | {ci['cer']:.2%} | {speed} | {ece} | {cover} |")
    print("\n| reader | mean case-insensitive seq acc over the styles |\n|---|---|")
    for reader in dict.fromkeys(reader for _, reader, _ in results):
        accs = [r["case_insensitive"]["seq_acc"] for _, name, r in results if name == reader]
        print(f"| {reader} | {sum(accs) / len(accs):.2%} |")


if __name__ == "__main__":
    main()
