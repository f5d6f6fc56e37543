import dataclasses
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from codec import LabelCodec
from data_loader import WORKER_NICENESS, SquarePadAndResize, load_data, read_rows
from inputs import decode_image, find_parquet_files
from labels import split_of


def encoded(img: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_pad_and_resize_keeps_aspect_ratio_and_centres():
    img = Image.new("RGB", (150, 50), (0, 0, 0))
    out = SquarePadAndResize(48, 160)(img)
    assert out.shape == (3, 48, 160)
    dark_columns = (out[0] < 0).all(dim=0).nonzero().flatten()
    assert dark_columns.min() == 8 and dark_columns.max() == 151  # 150x50 -> 144x48, 8 px of padding each side
    assert torch.all(out[:, :, :8] == 1.0)  # white padding, scaled to [-1, 1]


def test_pad_and_resize_tall_image_pads_width():
    out = SquarePadAndResize(32, 96)(Image.new("L", (20, 100), 0))
    assert out.shape == (1, 32, 96)
    assert (out[0] < 0).any(dim=0).sum() == 6


def test_pad_and_resize_batch_equals_one_by_one_and_stays_close_to_pil():
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in [(50, 150, 3), (30, 70, 3), (50, 150, 3), (64, 64, 3)]]
    resize = SquarePadAndResize(40, 128)
    batch = resize.batch(pixels)
    assert batch.shape == (4, 3, 40, 128)
    assert all(torch.equal(batch[i], resize(p)) for i, p in enumerate(pixels))
    pil = np.asarray(Image.fromarray(pixels[0]).resize((120, 40), Image.BILINEAR)).transpose(2, 0, 1)
    ours = (batch[0, :, :, 4:124] + 1) * 127.5
    assert np.abs(ours.numpy() - pil).max() <= 2.01  # PIL's BILINEAR within 2 levels; 4 px of padding each side


@pytest.mark.parametrize(
    "img",
    [
        Image.new("L", (40, 20), 128),
        Image.new("RGBA", (40, 20), (10, 20, 30, 0)),
        Image.new("P", (40, 20), 3),
        Image.fromarray(np.full((20, 40), 40000, dtype=np.uint16)),
        Image.new("1", (40, 20), 1),
    ],
    ids=["L", "RGBA", "P", "I16", "1bit"],
)
def test_decode_converts_every_mode(img):
    out = decode_image(encoded(img))
    assert out.mode == "RGB" and out.size == (40, 20)
    assert decode_image(encoded(img), channels=1).mode == "L"


def test_decode_cmyk_jpeg_and_bomb():
    assert decode_image(encoded(Image.new("CMYK", (40, 20), (0, 50, 50, 0)), "JPEG")).mode == "RGB"
    with pytest.raises(Image.DecompressionBombError):
        decode_image(encoded(Image.new("1", (6000, 6000))))


def test_find_parquet_files_accepts_folders_files_and_globs(tiny_parquet):
    folder = tiny_parquet.parent
    assert find_parquet_files([str(folder)]) == [tiny_parquet]
    assert find_parquet_files([str(folder / "*.parquet")]) == [tiny_parquet]
    assert find_parquet_files([str(tiny_parquet), str(tiny_parquet)]) == [tiny_parquet]


def test_load_data_splits_and_batches(tiny_config):
    codec = LabelCodec(tiny_config.model.charset, tiny_config.model.max_len)
    loaders = load_data(tiny_config, codec)
    sizes = {s: len(loaders[s].dataset) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 120 and min(sizes.values()) > 5
    images, targets, bad = next(iter(loaders["train"]))
    assert images.shape == (16, 3, 32, 96) and targets.shape == (16, 4) and bad == 0
    assert images.min() >= -1 and images.max() <= 1
    again = load_data(tiny_config, codec)  # the cache is reused and the split is stable
    assert again["val"].dataset.labels == loaders["val"].dataset.labels


def test_image_store_reads_every_row_without_mapping_it(tiny_config, tiny_parquet):
    """Each row's bytes come back exactly, in this process and in an unpickled copy (a
    spawned worker), and the images file is read, never memory-mapped."""
    codec = LabelCodec(tiny_config.model.charset, tiny_config.model.max_len)
    store, splits, _ = read_rows(tiny_config, codec)
    expected = [row["bytes"] for row in pq.read_table(tiny_parquet)["image"].to_pylist()]
    assert [store.get(0, row) for row in range(len(expected))] == expected
    copy = pickle.loads(pickle.dumps(store))
    assert copy.get(0, 7) == expected[7]
    assert ".images" not in Path("/proc/self/maps").read_text()
    by_hash = {split: sorted(rows[:, 1].tolist()) for split, (rows, _) in splits.items()}
    assert by_hash["val"] == sorted(i for i, b in enumerate(expected) if split_of(b, tiny_config.ratios) == "val")


def test_cache_is_rebuilt_when_the_parquet_changes(tiny_config, tiny_parquet, tmp_path):
    codec = LabelCodec(tiny_config.model.charset, tiny_config.model.max_len)
    copy = tmp_path / "copy.parquet"
    pq.write_table(pq.read_table(tiny_parquet).slice(0, 30), copy)
    config = dataclasses.replace(tiny_config, data=[str(copy)])
    assert sum(len(labels) for _, labels in read_rows(config, codec)[1].values()) == 30
    pq.write_table(pq.read_table(tiny_parquet).slice(0, 50), copy)
    assert sum(len(labels) for _, labels in read_rows(config, codec)[1].values()) == 50
    cached = sorted(p.suffix for p in (tmp_path / ".cache").iterdir())
    assert cached == [".arrow", ".images"]  # the first version's pair was deleted


def _niceness(_index: int) -> int:
    return os.nice(0)


def test_loader_workers_run_below_the_training_process(tiny_config):
    loader = load_data(dataclasses.replace(tiny_config, workers=1), LabelCodec(tiny_config.model.charset, tiny_config.model.max_len))[
        "train"
    ]
    probe = DataLoader([0], num_workers=1, worker_init_fn=loader.worker_init_fn, collate_fn=lambda items: [_niceness(i) for i in items])
    assert next(iter(probe)) == [min(19, os.nice(0) + WORKER_NICENESS)]
