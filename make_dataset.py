"""Combine parquet shards (hammer888/captcha-data, generated, your own) and folders of
captcha images (labels in the file names or a CSV: image_folders.py) into one clean file.

Streams row group by row group: memory stays bounded whatever the input size. Adds a
`label` column (parsed once) and a `split` column (train/val/test from a hash of the
image bytes, so identical images share a split). Bad rows are dropped, counted by
reason and listed in a JSON report; the output appears under its final name only
when complete.

    python make_dataset.py data/*.parquet --output data/combined/combined.parquet
    python make_dataset.py my_site/ --labels my_site/labels.csv --output data/my_site.parquet
"""

import argparse
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from atomic import atomic_write
from config import DEFAULT_SPLIT_RATIOS, HelpFormatter, add_dataclass_args, dataclass_from_args, option, parse_ratios
from image_folders import find_datasets
from inputs import decode_image, open_parquet
from labels import DEFAULT_CHARSET, DEFAULT_LABEL_PATTERN, SPLITS, label_problem, parse_label, split_of
from parallel import ordered_map
from progress import progress_bar

OUTPUT_SCHEMA = pa.schema(
    [
        ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("text", pa.string()),
        ("label", pa.string()),
        ("split", pa.string()),
    ]
)


def _row_problem(image: dict | None, label: str, charset: str, max_len: int) -> str | None:
    if not image or not image.get("bytes"):
        return "no_image"
    try:
        decode_image(image["bytes"])
    except Exception:
        return "bad_image"
    return label_problem(label, charset, max_len)


def _clean_batch(file: str, first_row: int, batch: pa.RecordBatch, charset: str, max_len: int, ratios) -> tuple[pa.Table, list]:
    """Validate one record batch; returns (good rows in OUTPUT_SCHEMA, [(file, row, reason, image path)])."""
    images, texts = batch.column("image").to_pylist(), batch.column("text").to_pylist()
    keep, dropped = [], []
    for i, (image, text) in enumerate(zip(images, texts)):
        label = parse_label(text)
        problem = _row_problem(image, label, charset, max_len)
        if problem:
            dropped.append((file, first_row + i, problem, (image or {}).get("path")))
        else:
            keep.append((image, text, label, split_of(image["bytes"], ratios)))
    table = pa.Table.from_pylist(
        [{"image": {"bytes": im["bytes"], "path": im.get("path")}, "text": t, "label": lab, "split": s} for im, t, lab, s in keep],
        schema=OUTPUT_SCHEMA,
    )
    return table, dropped


def parquet_to_parquet(
    inputs: list[str],
    output: str | os.PathLike,
    ratios: tuple[float, float, float] = (0.9, 0.05, 0.05),
    charset: str = DEFAULT_CHARSET,
    max_len: int = 8,
    report: str | os.PathLike | None = None,
    skip_bad_files: bool = False,
    workers: int = 1,
    batch_rows: int = 1024,
    labels: str = "",
    label_pattern: str = DEFAULT_LABEL_PATTERN,
) -> dict:
    """Combine ``inputs`` (files, folders, globs) into parquet ``output``; returns the summary.

    Raises ValueError naming the file for a non-parquet input or missing columns, unless
    ``skip_bad_files``, in which case the file is listed in the summary and skipped.
    """
    files = find_datasets(inputs, labels, label_pattern)
    if not files:
        raise FileNotFoundError(f"no parquet or image files in {inputs}")
    output = Path(output)
    sources, bad_files = [], []
    for path in files:
        try:
            sources.append((path, open_parquet(path)))
        except ValueError as err:
            if not skip_bad_files:
                raise
            bad_files.append(str(err))

    def tasks():
        for path, source in sources:
            row = 0
            for batch in source.iter_batches(batch_size=batch_rows, columns=["image", "text"]):
                yield str(path), row, batch, charset, max_len, ratios
                row += batch.num_rows

    rows_in = sum(s.metadata.num_rows for _, s in sources)
    reasons, dropped_rows, splits = Counter(), [], Counter()
    with (
        atomic_write(output) as tmp,
        pq.ParquetWriter(tmp, OUTPUT_SCHEMA) as writer,
        progress_bar(total=rows_in, unit="row", desc="combining") as bar,
    ):
        for table, dropped in ordered_map(_clean_batch, tasks(), workers):
            if table.num_rows:
                writer.write_table(table)
            splits.update(table.column("split").to_pylist())
            reasons.update(reason for _, _, reason, _ in dropped)
            dropped_rows += [{"file": f, "row": r, "reason": reason, "image": name} for f, r, reason, name in dropped]
            bar.update(table.num_rows + len(dropped))
    summary = {
        "output": str(output),
        "files": [str(p) for p, _ in sources],
        "bad_files": bad_files,
        "rows_in": rows_in,
        "rows_out": sum(splits.values()),
        "splits": {s: splits.get(s, 0) for s in SPLITS},
        "dropped": dict(reasons),
        "dropped_rows": dropped_rows,
    }
    if report:
        Path(report).write_text(json.dumps(summary, indent=1))
    return summary


@dataclass
class DatasetOptions:
    """make_dataset.py's settings; the flags they share with main.py have its names."""

    output: str = option("data/combined/combined.parquet", "output parquet file")
    split_ratios: str = option(DEFAULT_SPLIT_RATIOS, "train,val,test split ratios (from a hash of the image bytes)")
    charset: str = option(DEFAULT_CHARSET, "allowed label characters")
    max_len: int = option(8, "longest allowed label")
    report: str = option("", "JSON report path (default: <output>.report.json)")
    skip_bad_files: bool = option(False, "skip unreadable inputs instead of stopping")
    workers: int = option(1, "processes validating images (2: ~1.6x faster, ~1 GB peak)")
    labels: str = option("", "CSV/TSV of file,label for the image folders among the inputs (default: labels from the file names)")
    label_pattern: str = option(DEFAULT_LABEL_PATTERN, "regular expression whose first group is the label in an image file's name")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", help="parquet files, folders (of parquet files or of image files) or globs")
    add_dataclass_args(p, DatasetOptions)
    a = p.parse_args()
    o = dataclass_from_args(DatasetOptions, a)
    report = o.report or o.output + ".report.json"
    try:
        ratios = parse_ratios(o.split_ratios)
        s = parquet_to_parquet(
            a.inputs, o.output, ratios, o.charset, o.max_len, report, o.skip_bad_files, o.workers, 1024, o.labels, o.label_pattern
        )
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"make_dataset: {err}") from None
    print(f"wrote {s['rows_out']} of {s['rows_in']} rows to {s['output']}  splits {s['splits']}")
    print(f"dropped {sum(s['dropped'].values())} rows {s['dropped']}; bad files {len(s['bad_files'])}; report {report}")


if __name__ == "__main__":
    main()
