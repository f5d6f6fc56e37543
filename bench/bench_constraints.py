"""What answers constrained to a site's alphabet and length gain: a model reads captchas of a
restricted alphabet and fixed length (a third-party renderer, or a labelled --folder of a
site's captchas read whole) with and without --allowed-chars/--length, scored by
accuracy_calculator.py (accuracy, CER, calibration).

    pip install -r requirements-bench.txt
    python bench/bench_constraints.py --checkpoint pretrained/general.pt --style imagecaptcha --charset 0123456789 --length 5
    python bench/bench_constraints.py --folder site/ --charset 0123456789 --length 4
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, machine
from third_party_captchas import STYLES, write_third_party

from config import HelpFormatter
from image_folders import folder_parquet


def score(checkpoint: str, data: Path, json_path: Path, constraints: list[str]) -> dict:
    cmd = [sys.executable, str(ROOT / "accuracy_calculator.py"), "--checkpoint", checkpoint, "--data", str(data), *constraints]
    subprocess.run([*cmd, "--json", str(json_path), "--confusion-png", str(json_path.with_suffix(".png"))], check=True, capture_output=True)
    report = json.loads(json_path.read_text())
    coverage = next(r for r in report["coverage"] if abs(r["threshold"] - 0.9) < 1e-9)
    return {
        "seq_acc": report["case_sensitive"]["seq_acc"],
        "ci_seq_acc": report["case_insensitive"]["seq_acc"],
        "cer": report["case_sensitive"]["cer"],
        "ece": report["calibration"]["ece"],
        "coverage_0.9": coverage["coverage"],
        "acc_at_0.9": coverage["seq_acc"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "pretrained" / "general.pt"), help="the model to read with")
    p.add_argument("--style", choices=[s for s in STYLES if s != "multicolor"], default="imagecaptcha", help="renderer of the captchas")
    p.add_argument("--charset", default="0123456789", help="the site's alphabet (the labels are drawn from it)")
    p.add_argument("--length", type=int, default=5, help="the site's fixed label length")
    p.add_argument("--folder", default=None, help="a labelled folder of a site's captchas to read instead of --style's")
    p.add_argument("--count", type=int, default=2000, help="captchas to read")
    p.add_argument("--seed", type=int, default=1002, help="seed of the captchas")
    p.add_argument("--json", default=None, help="also write the rows here")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.folder:
            data = folder_parquet(Path(a.folder), cache=tmp)
        else:
            data = write_third_party(a.count, tmp / "site.parquet", a.seed, a.style, min_len=a.length, max_len=a.length, charset=a.charset)
        for name, constraints in (("as trained", []), ("constrained", ["--allowed-chars", a.charset, "--length", str(a.length)])):
            rows.append({"decoding": name} | score(a.checkpoint, data, tmp / f"{len(rows)}.json", constraints))
            print(json.dumps(rows[-1]), flush=True)
    captchas = a.folder or f"{a.count} {a.style} captchas"
    print(f"\nmachine: {machine()}; {a.checkpoint}; {captchas} of {a.length} characters from {a.charset!r}\n")
    print("| decoding | seq acc | seq acc (case-insensitive) | CER | ECE | coverage at 0.9 | accuracy there |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        at = "-" if r["acc_at_0.9"] is None else f"{r['acc_at_0.9']:.2%}"
        figures = f"{r['seq_acc']:.2%} | {r['ci_seq_acc']:.2%} | {r['cer']:.2%} | {r['ece']:.2%} | {r['coverage_0.9']:.1%} | {at}"
        print(f"| {r['decoding']} | {figures} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
