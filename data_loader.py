"""Parquet captchas (the shared schema) -> train/val/test DataLoaders.

Each parquet file is converted once into a cache (image_store.py): images stay encoded
bytes on disk, read one at a time and decoded in the DataLoader workers.
"""

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import distributed
from codec import LabelCodec
from config import Config
from device import get_device
from image_folders import find_datasets
from image_store import ImageStore, build_cache, read_cache
from inputs import decode_image, to_model_mode
from labels import SPLITS, label_problem, split_for


def image_pixels(image: Image.Image | bytes | str | os.PathLike, channels: int = 3) -> np.ndarray:
    """A PIL image, encoded bytes or an image file path -> its pixels (h, w, channels) uint8,
    in the model's colour mode. Raises the decoder's errors for anything that is not an image."""
    if isinstance(image, (str, os.PathLike)):
        image = Path(image).read_bytes()
    image = decode_image(image, channels) if isinstance(image, bytes) else to_model_mode(image, channels)
    return np.asarray(image).reshape(image.height, image.width, channels)


class SquarePadAndResize:
    """Resize images to fit (height, width) keeping their aspect ratio, centre them and pad.

    Despite the historical name the target is rectangular (wide by default): captchas
    are about 3:1, and padding them to a square would waste two thirds of the input.
    Resizing is torch's antialiased bilinear interpolation on uint8 pixels (within 2 levels
    of PIL's BILINEAR). ``batch`` resizes same-size images in one call: exactly the tensors
    of one-by-one calls at about half the cost per image (bench_preprocess.py).
    """

    def __init__(self, height: int, width: int, fill: int = 255):
        self.height, self.width, self.fill = height, width, fill

    def __call__(self, img: Image.Image | np.ndarray) -> torch.Tensor:
        """One PIL image (in the model's colour mode) or pixels (h, w, C) uint8 -> float (C, height, width) in [-1, 1]."""
        if isinstance(img, Image.Image):
            img = image_pixels(img, len(img.getbands()))
        return self.batch([img])[0]

    def batch(self, pixels: Sequence[np.ndarray]) -> torch.Tensor:
        """Pixels (h_i, w_i, C) uint8, sizes may differ -> float (N, C, height, width) in [-1, 1]."""
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(pixels):
            groups.setdefault(p.shape, []).append(i)
        if len(groups) == 1:
            return self._resize(np.stack(pixels))
        out = torch.empty(len(pixels), pixels[0].shape[2], self.height, self.width)
        for indices in groups.values():
            out[indices] = self._resize(np.stack([pixels[i] for i in indices]))
        return out

    def _resize(self, pixels: np.ndarray) -> torch.Tensor:
        """Same-size pixels (N, h, w, C) uint8 -> float (N, C, height, width)."""
        n, h0, w0, c = pixels.shape
        scale = min(self.height / h0, self.width / w0)
        w, h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # channels-last strides, as the fast uint8 kernel wants
        canvas = torch.full((n, c, self.height, self.width), self.fill, dtype=torch.uint8)
        top, left = (self.height - h) // 2, (self.width - w) // 2
        canvas[:, :, top : top + h, left : left + w] = F.interpolate(images, size=(h, w), mode="bilinear", antialias=True)
        return canvas.float().div_(127.5).sub_(1.0)


def preprocess_image(image: Image.Image | bytes | str | os.PathLike, config: Config) -> torch.Tensor:
    """A PIL image, encoded bytes or an image file path -> tensor (C, H, W) as the model sees it.

    The one preprocessing path: training, evaluation, test.py and the web demo all call it
    (predict.py through ``SquarePadAndResize.batch``, which gives the same tensors).
    """
    return SquarePadAndResize(config.model.img_height, config.model.img_width)(image_pixels(image, config.model.channels))


class CaptchaDataset(Dataset):
    """Rows (file, row) of an ImageStore -> (image (C, H, W), target (max_len,)).

    The DataLoader fetches a whole batch with ``__getitems__``: each image decoded (and
    augmented), then all resized in one ``SquarePadAndResize.batch`` call, which is about
    half the cost per image of resizing one at a time and spares a stacking copy. An image
    that fails to decode is dropped from its batch and counted.
    """

    def __init__(self, store: ImageStore, rows: np.ndarray, labels: list[str], config: Config, codec: LabelCodec, augment=None):
        self.store, self.rows, self.labels, self.codec, self.config = store, rows, labels, codec, config
        self.augment = augment  # a PIL -> PIL transform for training, or None
        self.resize = SquarePadAndResize(config.model.img_height, config.model.img_width)

    def __len__(self) -> int:
        return len(self.rows)

    def image_bytes(self, index: int) -> bytes:
        file_index, row, _ = self.rows[index]
        return self.store.get(int(file_index), int(row))

    def pixels(self, index: int) -> np.ndarray | None:
        """Row ``index``'s image as pixels (h, w, C) uint8, augmented in training; None if it does not decode."""
        try:
            data = self.image_bytes(index)
            image = data if self.augment is None else self.augment(decode_image(data, self.config.model.channels))
            return image_pixels(image, self.config.model.channels)
        except Exception:  # any decoding error: the row is counted as bad, training goes on
            return None

    def __getitem__(self, index: int):
        """(image (C, H, W), target (max_len,)), or None for an image that does not decode."""
        pixels = self.pixels(index)
        return None if pixels is None else (self.resize(pixels), self.codec.encode(self.labels[index]))

    def __getitems__(self, indices: list[int]):
        """One batch: (images (B, C, H, W), targets (B, max_len), bad count), (None, None, bad
        count) when no image of the batch decodes. DataLoader passes it to ``as_batch``."""
        pixels = [self.pixels(i) for i in indices]
        good = [i for i, p in zip(indices, pixels) if p is not None]
        if not good:
            return None, None, len(indices)
        images = self.resize.batch([p for p in pixels if p is not None])
        return images, torch.stack([self.codec.encode(self.labels[i]) for i in good]), len(indices) - len(good)


def as_batch(batch):
    """The DataLoader's collate_fn: ``CaptchaDataset.__getitems__`` already returns the batch."""
    return batch


def read_rows(config: Config, codec: LabelCodec, cache_dir: Path | None = None):
    """Open (building once) the cache of every parquet file of ``config.data`` and sort its
    rows into splits: the ``split`` column where the file has one, else the hash split.

    With ``config.mix`` each --data entry is a source of its own, numbered in order;
    otherwise they are pooled as source 0. Returns (ImageStore, {split: (rows (N, 3) int64 of
    (file, row, source), labels)}, skipped counts by reason).
    """
    sources = [[entry] for entry in config.data] if config.mix_weights else [config.data]
    files = [
        (path, source) for source, entries in enumerate(sources) for path in find_datasets(entries, config.labels, config.label_pattern)
    ]
    missing = [entries for source, entries in enumerate(sources) if all(s != source for _, s in files)]
    if missing:
        raise FileNotFoundError(f"no parquet or image files found in {missing[0]}")
    metas = [build_cache(path, cache_dir) for path, _ in files]
    tables = [read_cache(meta) for meta in metas]
    split_rows, skipped = {s: ([], []) for s in SPLITS}, {}
    for file_index, ((_, source), table) in enumerate(zip(files, tables)):
        splits, keys = table["split"].to_pylist(), table["split_key"].to_numpy()
        for row, label in enumerate(table["label"].to_pylist()):
            label = codec.fold(label or "")
            problem = label_problem(label, codec.charset, codec.max_len)
            if problem is not None:
                skipped[problem] = skipped.get(problem, 0) + 1
                continue
            split = splits[row] or split_for(keys[row], config.ratios)
            split_rows[split][0].append((file_index, row, source))
            split_rows[split][1].append(label)
    out = {s: (np.asarray(r, dtype=np.int64).reshape(-1, 3), lab) for s, (r, lab) in split_rows.items()}
    return ImageStore(metas, tables), out, skipped


class EpochSampler(DistributedSampler):
    """The training order: DistributedSampler's seeded shuffle, reshuffled by ``set_epoch``
    (one replica, or this process's share under torchrun), that can start an epoch
    ``skip`` indices in, so a run resumed mid-epoch gets exactly the batches it had left.

    With ``mix`` (one weight per source) each epoch's positions are mapped through a table
    that holds floor(weight x len) indices of each source, the remainder going to the
    heaviest (a source smaller than its share is repeated, a larger one subsampled afresh
    every epoch).
    """

    def __init__(self, dataset: Dataset, seed: int, sources: np.ndarray | None = None, mix: list[float] | None = None):
        super().__init__(dataset, num_replicas=distributed.world_size(), rank=distributed.rank(), shuffle=True, seed=seed)
        self.sources, self.mix, self.skip = sources, mix, 0

    def mix_table(self) -> np.ndarray:
        """This epoch's dataset index for each position (length len(dataset))."""
        rng = np.random.default_rng([self.seed, self.epoch])
        total = len(self.sources)
        counts = np.floor(np.asarray(self.mix) * total).astype(int)
        counts[np.argmax(self.mix)] += total - counts.sum()
        picks = [np.resize(rng.permutation(np.flatnonzero(self.sources == s)), n) for s, n in enumerate(counts) if n]
        return np.concatenate(picks)

    def __iter__(self):
        positions = itertools.islice(super().__iter__(), self.skip, None)
        if self.mix is None:
            return positions
        table = self.mix_table()
        return (int(table[p]) for p in positions)

    def __len__(self) -> int:
        return super().__len__() - self.skip


def _loader(dataset: CaptchaDataset, config: Config, shuffle: bool) -> DataLoader:
    sampler = EpochSampler(dataset, config.seed, dataset.rows[:, 2], config.mix_weights) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=shuffle and len(dataset) > config.batch_size,
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
        pin_memory=get_device(config.device).type == "cuda",
        collate_fn=as_batch,
        generator=torch.Generator().manual_seed(config.seed),
        worker_init_fn=_lower_priority,
    )


WORKER_NICENESS = 10


def _lower_priority(_worker_id: int) -> None:
    """Run DataLoader workers below the training threads: where they share the CPU cores
    (CPU training), a preempted compute thread stalls the other at every synchronisation.
    On 2 cores train_model ran at 207-216 instead of 198-205 images/s, and with
    augmentation on at 166 instead of 137 (bench/RESULTS.md). Idle cores still run them."""
    if hasattr(os, "nice"):
        os.nice(WORKER_NICENESS)


def _first_source(rows: np.ndarray, labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """The rows (and labels) of source 0: mixed runs validate and test on the source the user cares about."""
    keep = rows[:, 2] == 0
    return rows[keep], [label for label, k in zip(labels, keep) if k]


AUGMENT_BELOW = 20000


def augmentation(config: Config, train_rows: int):
    """The training augmentation (torchvision, on PIL images) per ``config.augment``, or None.

    Mild on purpose: a captcha is still readable after it, and the label still true.
    """
    if config.augment == "off" or (config.augment == "auto" and train_rows >= AUGMENT_BELOW):
        return None
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomApply([v2.RandomAffine(degrees=4, translate=(0.03, 0.06), scale=(0.92, 1.05), shear=6, fill=255)], p=0.7),
            v2.RandomApply([v2.ElasticTransform(alpha=8.0, sigma=4.0, fill=255)], p=0.3),
            v2.RandomApply([v2.ColorJitter(0.3, 0.3, 0.3, 0.05)], p=0.5),
            v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 0.9))], p=0.3),
        ]
    )


def load_data(config: Config, codec: LabelCodec, cache_dir: Path | None = None) -> dict:
    """Build {"train", "val", "test"} DataLoaders plus "skipped" (label problems by reason).

    Under torchrun each process gets its share of every split (see EpochSampler).

    The train loader's order comes from its EpochSampler (``loader.sampler``), which the
    training loop moves on with ``set_epoch``, so a resumed run sees the same order.
    """
    store, splits, skipped = read_rows(config, codec, cache_dir)
    loaders: dict = {"skipped": skipped}
    for name, (rows, labels) in splits.items():
        if name != "train" and config.mix_weights:
            rows, labels = _first_source(rows, labels)
        if config.limit:
            rows, labels = rows[: config.limit], labels[: config.limit]
        if name != "train" and distributed.world_size() > 1:  # each process validates its share
            rows, labels = rows[distributed.rank() :: distributed.world_size()], labels[distributed.rank() :: distributed.world_size()]
        augment = augmentation(config, len(rows)) if name == "train" else None
        loaders[name] = _loader(CaptchaDataset(store, rows, labels, config, codec, augment), config, shuffle=name == "train")
    if len(loaders["train"].dataset) == 0:
        raise ValueError(f"no trainable rows in {config.data} (skipped: {skipped})")
    return loaders


def evaluation_loader(config: Config, codec: LabelCodec, splits: tuple[str, ...]) -> tuple[DataLoader, dict]:
    """One unshuffled loader over the rows of ``splits`` of ``config.data``; plus skipped counts."""
    store, by_split, skipped = read_rows(config, codec)
    rows = np.concatenate([by_split[s][0] for s in splits])
    labels = [label for s in splits for label in by_split[s][1]]
    if config.mix_weights and splits != ("train",):  # as in training
        rows, labels = _first_source(rows, labels)
    order = np.lexsort((rows[:, 1], rows[:, 0]))  # file order, whatever the splits
    rows, labels = rows[order], [labels[i] for i in order]
    if config.limit:
        rows, labels = rows[: config.limit], labels[: config.limit]
    return _loader(CaptchaDataset(store, rows, labels, config, codec), config, shuffle=False), skipped
