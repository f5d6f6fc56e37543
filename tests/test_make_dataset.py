import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from captcha_generator import SCHEMA
from make_dataset import parquet_to_parquet


def png(colour=(255, 0, 0), size=(30, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def write_shard(path, rows):
    """rows: (image bytes or None, text)"""
    images = [None if b is None else {"bytes": b, "path": f"{i}.png"} for i, (b, _) in enumerate(rows)]
    pq.write_table(pa.Table.from_pydict({"image": images, "text": [t for _, t in rows]}, schema=SCHEMA), path)
    return path


def test_combines_parses_labels_and_splits(tmp_path, tiny_parquet):
    extra = write_shard(tmp_path / "extra.parquet", [(png(), "The text in this image is 'ab12'"), (png((0, 9, 0)), "c3")])
    out = tmp_path / "out" / "all.parquet"
    summary = parquet_to_parquet([str(tiny_parquet), str(extra)], out, charset="abc123", max_len=4)
    table = pq.read_table(out)
    assert table.column_names == ["image", "text", "label", "split"]
    assert table.num_rows == summary["rows_out"] == 122
    labels = table["label"].to_pylist()
    assert labels[-2:] == ["ab12", "c3"]
    assert set(table["split"].to_pylist()) <= {"train", "val", "test"}
    assert sum(summary["splits"].values()) == 122
    assert not list(out.parent.glob("*.tmp"))


def test_identical_images_share_a_split(tmp_path):
    rows = []
    for i in range(40):
        img = png((i, i, i))
        rows += [(img, f"'a{i % 10}'"), (img, f"'b{i % 10}'")]
    out = tmp_path / "out.parquet"
    parquet_to_parquet([str(write_shard(tmp_path / "dup.parquet", rows))], out, ratios=(0.34, 0.33, 0.33))
    table = pq.read_table(out).to_pylist()
    by_image = {}
    for row in table:
        by_image.setdefault(row["image"]["bytes"], set()).add(row["split"])
    assert len(by_image) == 40
    assert all(len(s) == 1 for s in by_image.values())
    assert len({next(iter(s)) for s in by_image.values()}) == 3


def test_bad_rows_are_dropped_counted_and_listed(tmp_path):
    good = png()
    rows = [
        (good, "'ok12'"),
        (b"not an image at all", "'ab'"),
        (good[: len(good) // 2], "'ab'"),
        (b"", "'ab'"),
        (None, "'ab'"),
        (good, "''"),
        (good, "'abcdefghij'"),
        (good, "'ab?'"),
    ]
    shard = write_shard(tmp_path / "bad.parquet", rows)
    report = tmp_path / "report.json"
    summary = parquet_to_parquet([str(shard)], tmp_path / "out.parquet", max_len=8, report=report)
    assert summary["rows_out"] == 1
    assert summary["dropped"] == {"bad_image": 2, "no_image": 2, "empty": 1, "too_long": 1, "bad_chars": 1}
    listed = json.loads(report.read_text())["dropped_rows"]
    assert [(r["row"], r["reason"]) for r in listed] == [
        (1, "bad_image"), (2, "bad_image"), (3, "no_image"), (4, "no_image"), (5, "empty"), (6, "too_long"), (7, "bad_chars")
    ]  # fmt: skip
    assert all(r["file"] == str(shard) for r in listed)


def test_non_parquet_and_missing_columns(tmp_path, tiny_parquet):
    junk = tmp_path / "junk.parquet"
    junk.write_text("this is not parquet")
    with pytest.raises(ValueError, match="junk.parquet: not a parquet file"):
        parquet_to_parquet([str(junk)], tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()
    nolabel = tmp_path / "nolabel.parquet"
    pq.write_table(pa.table({"image": [{"bytes": png(), "path": "x"}]}), nolabel)
    with pytest.raises(ValueError, match=r"nolabel.parquet: missing column\(s\) \['text'\]"):
        parquet_to_parquet([str(nolabel)], tmp_path / "out.parquet")
    summary = parquet_to_parquet([str(junk), str(tiny_parquet)], tmp_path / "out.parquet", skip_bad_files=True)
    assert summary["rows_out"] == 120 and len(summary["bad_files"]) == 1


def test_parallel_workers_give_the_same_file(tmp_path, tiny_parquet):
    a = parquet_to_parquet([str(tiny_parquet)], tmp_path / "a.parquet", workers=1, batch_rows=16)
    b = parquet_to_parquet([str(tiny_parquet)], tmp_path / "b.parquet", workers=2, batch_rows=16)
    assert pq.read_table(a["output"]).equals(pq.read_table(b["output"]))
