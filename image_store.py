"""The training-data cache: each parquet file's images as one flat file of encoded bytes,
read one image at a time with ``os.pread``, beside a small Arrow table per file (label,
source split, split key, byte offset and length of each row).

Reading with pread instead of memory-mapping keeps the images in the kernel's page cache
and out of every process's resident memory: on a kernel with large page-cache folios a
memory-mapped read of one 8 KB image mapped up to 2 MB around it, so a few thousand
random reads made a 7 GB file resident in each DataLoader worker (bench/RESULTS.md).
The split key (a hash of the image bytes) is computed once here, so a dataset without a
``split`` column is not read in full at every start.
"""

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atomic import atomic_write
from inputs import cache_folder, open_parquet
from labels import parse_label, split_key

CACHE_VERSION = 2
META_SCHEMA = pa.schema(
    [
        ("offset", pa.int64()),
        ("length", pa.int64()),
        ("label", pa.string()),
        ("split", pa.string()),  # the source's split column; null where it has none
        ("split_key", pa.float64()),  # labels.split_key of the image bytes
    ]
)


def build_cache(parquet: Path, cache_dir: Path | None = None) -> Path:
    """Convert ``parquet`` once, row group by row group, into ``<stem>-<key>.arrow`` (the
    table above) and ``<stem>-<key>.images`` (the image bytes back to back) in ``cache_dir``;
    reused while the parquet file is unchanged, replaced (the old pair deleted) when it
    changes (``cache_dir`` by default: inputs.cache_folder of the parquet file's folder).
    Returns the ``.arrow`` path."""
    cache_dir = cache_dir or cache_folder(parquet.parent)
    stat = parquet.stat()
    where = hashlib.sha1(str(parquet.resolve()).encode()).hexdigest()[:8]
    version = hashlib.sha1(f"v{CACHE_VERSION}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:8]
    meta = cache_dir / f"{parquet.stem}-{where}-{version}.arrow"
    if meta.exists():
        return meta
    source = open_parquet(parquet)
    wanted = [c for c in ("image", "text", "label", "split") if c in source.schema_arrow.names]
    offset = 0
    # the metadata file is renamed last: its presence means the pair is complete
    with atomic_write(meta) as tmp_meta, atomic_write(meta.with_suffix(".images")) as tmp_images:
        with open(tmp_images, "wb") as blob, pa.OSFile(str(tmp_meta), "wb") as sink, pa.ipc.new_file(sink, META_SCHEMA) as writer:
            for batch in source.iter_batches(batch_size=4096, columns=wanted):
                images = [b or b"" for b in pc.struct_field(batch.column("image"), "bytes").to_pylist()]
                lengths = np.fromiter((len(b) for b in images), np.int64, len(images))
                starts = offset + np.cumsum(lengths) - lengths
                blob.write(b"".join(images))
                offset += int(lengths.sum())
                names = batch.schema.names
                labels = batch.column("label") if "label" in names else pa.array([parse_label(t) for t in batch.column("text").to_pylist()])
                splits = batch.column("split") if "split" in names else pa.nulls(len(images), pa.string())
                keys = pa.array([split_key(b) for b in images], pa.float64())
                columns = [starts, lengths, labels.cast(pa.string()), splits.cast(pa.string()), keys]
                writer.write_batch(pa.record_batch(columns, schema=META_SCHEMA))
    for stale in cache_dir.glob(f"{parquet.stem}-{where}-*"):  # caches of earlier versions of this file
        if stale.suffix in (".arrow", ".images") and stale.stem != meta.stem:
            stale.unlink(missing_ok=True)
    return meta


def read_cache(meta: Path) -> pa.Table:
    """The metadata table of a cache built by ``build_cache`` (read into memory; it is small)."""
    with pa.OSFile(str(meta)) as f:
        return pa.ipc.open_file(f).read_all()


class ImageStore:
    """The encoded bytes of row ``row`` of file ``file`` of a list of caches.

    Each process opens the files itself on first use, so a store can be forked or pickled
    into DataLoader workers.
    """

    def __init__(self, metas: list[Path], tables: list[pa.Table]):
        self.paths = [str(m.with_suffix(".images")) for m in metas]
        self.offsets = [t["offset"].to_numpy() for t in tables]
        self.lengths = [t["length"].to_numpy() for t in tables]
        self._files, self._pid = [], None

    def get(self, file: int, row: int) -> bytes:
        if self._pid != os.getpid():
            self._files, self._pid = [open(p, "rb", buffering=0) for p in self.paths], os.getpid()
        return os.pread(self._files[file].fileno(), int(self.lengths[file][row]), int(self.offsets[file][row]))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": [], "_pid": None}
