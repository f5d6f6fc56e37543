"""Folders of image files as datasets: each folder becomes a parquet file in the shared
schema (``image`` {bytes, path}, ``text``), kept in the folder's ``.cache/`` and rebuilt
when its files or labels change, so everything that reads parquet reads folders too.

Labels come from a CSV/TSV of file,label (``--labels``, or a ``labels.csv`` in the folder)
or from the file names: by default
the part of the name before the first ``_`` (``aB3x.png``, ``aB3x_0017.jpg``), otherwise
the first group of ``--label-pattern`` (a regular expression searched in the name without
its suffix). A file without a label gets an empty ``text``; the readers count it, and any
unreadable image, by reason.
"""

import csv
import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from atomic import atomic_write
from inputs import cache_folder, find_parquet_files, image_files
from labels import DEFAULT_LABEL_PATTERN, label_from_name

FOLDER_LABELS = "labels.csv"  # a folder's own label file, used unless --labels names another
SCHEMA = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("text", pa.string())])


def read_label_file(path: str | Path) -> dict[str, str]:
    """A CSV or TSV of file,label rows -> {file name: label}; a first row naming its columns
    (file/filename/image/path) is skipped."""
    text = Path(path).read_text(encoding="utf-8-sig")
    dialect = csv.Sniffer().sniff(text[:4096], delimiters=",\t;") if text.strip() else csv.excel
    rows = [r for r in csv.reader(text.splitlines(), dialect) if len(r) >= 2]
    if rows and rows[0][0].strip().lower() in ("file", "filename", "image", "path"):
        rows = rows[1:]
    return {Path(r[0].strip()).name: r[1].strip() for r in rows}


def folder_parquet(folder: Path, labels: str = "", label_pattern: str = DEFAULT_LABEL_PATTERN, cache: Path | None = None) -> Path:
    """``folder``'s image files (not its subfolders) as a parquet file in the shared schema
    (built once per state of the files, the label file and the pattern) in ``cache``
    (default: inputs.cache_folder); returns its path. Without ``labels``, a ``labels.csv``
    inside the folder (what test.py --review writes) labels it."""
    files = image_files(folder)
    if not labels and (folder / FOLDER_LABELS).is_file():
        labels = str(folder / FOLDER_LABELS)
    key = hashlib.sha1(label_pattern.encode())
    for f in files:
        stat = f.stat()
        key.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    if labels:
        key.update(Path(labels).read_bytes())
    output = (cache or cache_folder(folder)) / f"images-{key.hexdigest()[:12]}.parquet"
    if output.exists():
        return output
    named = read_label_file(labels) if labels else None
    with atomic_write(output) as tmp, pq.ParquetWriter(tmp, SCHEMA) as writer:
        for start in range(0, len(files), 1024):
            chunk = files[start : start + 1024]
            texts = [named.get(f.name, "") if named is not None else label_from_name(f.name, label_pattern) for f in chunk]
            rows = [{"image": {"bytes": f.read_bytes(), "path": f.name}, "text": t} for f, t in zip(chunk, texts)]
            writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
    for stale in output.parent.glob("images-*.parquet"):
        if stale != output:
            stale.unlink(missing_ok=True)
    return output


def find_datasets(paths: list[str], labels: str = "", label_pattern: str = DEFAULT_LABEL_PATTERN) -> list[Path]:
    """Parquet files from files, folders and globs (inputs.find_parquet_files), plus one
    parquet file (folder_parquet) for each folder given that holds image files."""
    found = find_parquet_files(paths)
    for p in paths:
        if Path(p).is_dir() and image_files(Path(p)):
            found.append(folder_parquet(Path(p), labels, label_pattern))
    return sorted(set(found))
