"""Unlabelled captchas for semi-supervised training: where they come from, and the weak and
strong views of each that the teacher and the student read.

A source is a parquet file in the shared schema (its text, where present, is kept only to
report how often pseudo-labels are right) or a folder of image files. Each training step
takes ``mu`` unlabelled images per labelled one: the teacher reads the weak view (the image
as the model always sees it), the student learns the teacher's confident answers on the
strong view (RandAugment-style operations that suit captchas, an elastic warp, erasing).
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

import distributed
from captcha_generator import elastic_transform
from config import Config
from data_loader import SquarePadAndResize, _lower_priority, as_batch, image_pixels
from image_store import ImageStore, build_cache, read_cache
from inputs import decode_image, find_parquet_files, image_files


class UnlabelledImages:
    """Encoded images from parquet files and image folders, with their labels where the
    parquet rows carry one (else None). ``get(i)`` reads image ``i``'s bytes."""

    def __init__(self, sources: list[str], cache_dir: Path | None = None):
        self.files: list[Path] = []
        metas, tables, rows, self.labels = [], [], [], []
        for source in sources:
            path = Path(source)
            if path.is_dir() and image_files(path):
                self.files += image_files(path)
                continue
            for parquet in find_parquet_files([source]):
                metas.append(build_cache(parquet, cache_dir))
                tables.append(read_cache(metas[-1]))
                rows += [(len(tables) - 1, r) for r in range(tables[-1].num_rows)]
                self.labels += [label or None for label in tables[-1]["label"].to_pylist()]
        if not rows and not self.files:
            raise FileNotFoundError(f"no images in --unlabelled {' '.join(sources)} (parquet files or folders of image files)")
        self.store, self.rows = ImageStore(metas, tables), rows
        self.labels += [None] * len(self.files)

    def __len__(self) -> int:
        return len(self.rows) + len(self.files)

    def get(self, index: int) -> bytes:
        if index < len(self.rows):
            return self.store.get(*self.rows[index])
        return self.files[index - len(self.rows)].read_bytes()


def strong_augmentation(config: Config):
    """The student's view: ``config.strong_ops`` RandAugment operations at magnitude
    ``config.strong_magnitude`` (affine, colour, posterize, solarize, sharpness, equalize...;
    no flips, which would change what a captcha says), then, half the time, the generator's
    elastic warp (6x faster than torchvision's on a captcha), seeded from torch's generator
    so that a resumed run draws the same views. PIL in, PIL out (erasing on the tensor later)."""
    from torchvision.transforms import v2

    rand_augment = v2.RandAugment(num_ops=config.strong_ops, magnitude=config.strong_magnitude, fill=255)

    def strong(image: Image.Image) -> Image.Image:
        image = rand_augment(image)
        seed = int(torch.randint(0, 2**31, ()))
        return elastic_transform(image, np.random.default_rng(seed), alpha=1.5) if seed % 2 else image

    return strong


class UnlabelledDataset(Dataset):
    """Unlabelled images -> batches of (weak (N, C, H, W), strong (N, C, H, W), labels or None, bad count)."""

    def __init__(self, images: UnlabelledImages, config: Config):
        self.images, self.channels = images, config.model.channels
        self.resize = SquarePadAndResize(config.model.img_height, config.model.img_width)
        self.strong = strong_augmentation(config)
        from torchvision.transforms import v2

        self.erase = v2.RandomErasing(p=0.5, scale=(0.01, 0.05), ratio=(0.3, 3.3), value=0)

    def __len__(self) -> int:
        return len(self.images)

    def _views(self, index: int):
        try:
            image = decode_image(self.images.get(index), self.channels)
        except Exception:  # unreadable or not an image: counted, skipped
            return None
        return image_pixels(image, self.channels), image_pixels(self.strong(image), self.channels)

    def __getitems__(self, indices: list[int]):
        views = [self._views(i) for i in indices]
        good = [(i, v) for i, v in zip(indices, views) if v is not None]
        if not good:
            return None, None, [], len(indices)
        weak = self.resize.batch([v[0] for _, v in good])
        strong = torch.stack([self.erase(view) for view in self.resize.batch([v[1] for _, v in good])])  # a patch of its own each
        return weak, strong, [self.images.labels[i] for i, _ in good], len(indices) - len(good)


class EndlessSampler(Sampler):
    """Indices for the unlabelled stream of one labelled epoch: a permutation seeded by
    (seed, epoch), repeated as often as the epoch needs, this process's share under torchrun,
    starting ``skip`` indices in (so a run resumed mid-epoch continues the same stream)."""

    def __init__(self, size: int, per_epoch: int, seed: int):
        self.size, self.per_epoch, self.seed, self.epoch, self.skip = size, per_epoch, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        order = np.resize(order, self.per_epoch * distributed.world_size())[distributed.rank() :: distributed.world_size()]
        return iter(order[self.skip :].tolist())

    def __len__(self) -> int:
        return self.per_epoch - self.skip


def unlabelled_loader(config: Config, steps_per_epoch: int, cache_dir: Path | None = None) -> DataLoader:
    """The unlabelled stream: ``config.mu * config.batch_size`` images per step, for
    ``steps_per_epoch`` steps of every epoch (``loader.sampler`` moves with set_epoch and skip)."""
    images = UnlabelledImages(config.unlabelled, cache_dir)
    batch = config.mu * config.batch_size
    sampler = EndlessSampler(len(images), steps_per_epoch * batch, config.seed)
    return DataLoader(
        UnlabelledDataset(images, config),
        batch_size=batch,
        sampler=sampler,
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
        collate_fn=as_batch,
        generator=torch.Generator().manual_seed(config.seed),
        worker_init_fn=_lower_priority,
    )
