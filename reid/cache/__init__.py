"""HDF5 caches aligned with the dataset index (writer, reader, shard merge, inspection statistics)."""

from reid.cache.h5 import (
    CacheCorrupt,
    CacheError,
    CacheIndexMismatch,
    CacheMeta,
    CacheReader,
    CacheWriter,
    describe,
    h5open,
    merge_shards,
    parse_shard,
    shard_rows,
    tmp_path,
)

__all__ = [
    "CacheCorrupt",
    "CacheError",
    "CacheIndexMismatch",
    "CacheMeta",
    "CacheReader",
    "CacheWriter",
    "describe",
    "h5open",
    "merge_shards",
    "parse_shard",
    "shard_rows",
    "tmp_path",
]
