"""HDF5 caches aligned with the dataset index (writer, reader, shard merge, inspection statistics)."""

from reid.cache.h5 import (
    FIELD_KINDS,
    CacheCorrupt,
    CacheError,
    CacheIndexMismatch,
    CacheMeta,
    CacheReader,
    CacheWriter,
    Field,
    check_field,
    describe,
    h5open,
    merge_shards,
    parse_shard,
    shard_rows,
    tmp_path,
)

__all__ = [
    "FIELD_KINDS",
    "CacheCorrupt",
    "CacheError",
    "CacheIndexMismatch",
    "CacheMeta",
    "CacheReader",
    "CacheWriter",
    "Field",
    "check_field",
    "describe",
    "h5open",
    "merge_shards",
    "parse_shard",
    "shard_rows",
    "tmp_path",
]
