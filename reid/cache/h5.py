"""HDF5 teacher caches aligned with the dataset index: atomic, resumable, shardable, byte-reproducible.

Layout (docs/contracts.md, "HDF5 caches"): one dataset per field, shape (N, *shape), chunks of one row, gzip 4 +
shuffle; a fixed-length bytes ``path`` dataset; ``done`` uint8 (N,); ``digest`` uint8 (N, 1 + fields, 16);
provenance attributes and ``content_digest``. No timestamps.

How the guarantees are met:

- **Atomic**: rows are written into ``<out>.tmp`` (same directory); ``finalize`` builds the final file as
  ``<out>.final.tmp``, verifies it and ``os.replace``s it onto ``<out>``. No ``<out>`` exists before that.
- **Resumable**: ``done`` is set only after the rows' data has been flushed (data flush, then done flush), and on
  resume every row marked done is checked to have its chunks allocated, so a kill at any moment loses at most
  the rows since the last flush. A ``.tmp`` whose provenance differs (teacher, backend, model hash, params,
  index hash, fields, shard) is discarded with a warning.
- **Byte-reproducible**: chunk allocation order in the work file depends on the history (batches, resumes,
  shards), so ``finalize``/``merge_shards`` always write a fresh file in one canonical order (attributes in a
  fixed order, ``path``, ``done``, then fields sorted by name, each row by row) by copying the already
  compressed chunks verbatim (``read_direct_chunk``/``write_direct_chunk``). Any history with the same row
  data therefore gives the same bytes. h5py >= 3.5 writes datasets without timestamps (``track_times=False``
  is also passed explicitly); h5py 3.16 / HDF5 2.0 adds none to files or groups (tested).
- **Shards**: shard i/n covers rows [i*N//n, (i+1)*N//n). A part is a normal cache file with all N rows
  allocated but only its own rows done (unwritten chunks take no space) plus a ``shard`` attribute "i/n";
  readers refuse parts, ``merge_shards`` joins them into the bytes a single run writes.
- **Checksummed**: ``digest[i, 0]`` is the BLAKE2b-128 of row i's path, ``digest[i, 1 + k]`` that of field k's
  row (fields in name order), computed from the values in memory when the row is written. The finished file's
  ``content_digest`` attribute hashes the provenance, ``done`` and the whole ``digest`` array. Readers check
  the attribute and the paths when they open a file and each row's digest when they read it, so a flipped byte
  anywhere (a compressed chunk, a broken chunk index that makes HDF5 return the fill value, a path, an
  attribute) is a ``CacheCorrupt`` naming the file and row, never data; ``finalize`` reads every row back
  before it publishes the file.
- **Locking**: every open uses ``locking=False`` (one setting everywhere). HDF5 file locks fail on NFS, Lustre
  and GPFS, where clusters keep caches; the tmp + rename protocol already keeps readers off files being written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

import h5py
import numpy as np

from reid.hashing import file_sha256
from reid.locking import exclusive_lock

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 2: every field records its kind; 3: per-row digests and a content digest
COMPRESSION = "gzip"
COMPRESSION_LEVEL = 4
RESERVED = ("path", "done", "digest")
SPACE_MARGIN_BYTES = 64 << 20  # free space kept beyond the next rows (HDF5 metadata, the final file's header)
DIGEST_BYTES = 16  # BLAKE2b-128 per row and field: damage detection, not a defence against a forger

# How a field follows the training augmentation (reid/data/dataset.py warps by kind, never by field name):
#   labels    (h, w) integer label map: nearest-neighbour warp, left/right classes swapped on a flip
#   heatmaps  (C, h, w) float maps: bilinear warp to the 1/4-resolution grid, zeroed where the image is erased
#   image     (h, w, 3) uint8 RGB picture (e.g. a face crop): flipped with the image, normalised like it
#   vector    anything else (scores, boxes, logits): passed through unchanged
FIELD_KINDS = ("labels", "heatmaps", "image", "vector")


class Field(NamedTuple):
    """Per-row shape, numpy dtype name and kind of one cache field."""

    shape: tuple[int, ...]
    dtype: str
    kind: str


FieldSpec = Field


class CacheError(RuntimeError):
    """A cache file cannot be used as asked (incomplete, wrong teacher, missing field, bad shard set)."""


class CacheIndexMismatch(CacheError):
    """The cache was built for a different index than the one given."""


class CacheCorrupt(CacheError):
    """The HDF5 file itself is damaged (truncated, bit-flipped): it must be rebuilt."""


# What h5py raises on a damaged file besides OSError (a broken link name is a KeyError, a broken datatype a
# ValueError or TypeError, a broken attribute a UnicodeDecodeError): each becomes a CacheCorrupt naming the file.
DAMAGE = (OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeDecodeError, IndexError, AttributeError,
          OverflowError)


def h5open(path: str | Path, mode: str = "r") -> h5py.File:
    """Open an HDF5 file with the project's single locking setting (see module docstring); a file that HDF5
    cannot open for reading is a CacheCorrupt naming it (h5py's own OSError does not)."""
    try:
        return h5py.File(path, mode, locking=False)
    except DAMAGE as exc:
        if mode != "r" or not Path(path).is_file():
            raise
        raise CacheCorrupt(f"{path}: cannot be opened as HDF5 ({exc}); the file is truncated or damaged: delete "
                           "it and rerun the rule that makes it (snakemake / dvc repro)") from exc


def tmp_path(out: str | Path) -> Path:
    """The work file of a cache being written: ``<out>.tmp`` in the same directory (same filesystem)."""
    out = Path(out)
    return out.with_name(out.name + ".tmp")


def shard_rows(num_rows: int, shard: tuple[int, int] | None) -> range:
    """Rows of shard i/n: [i*N//n, (i+1)*N//n); the whole range when ``shard`` is None."""
    if shard is None:
        return range(num_rows)
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {i}/{n}")
    return range(i * num_rows // n, (i + 1) * num_rows // n)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'1/4' -> (1, 4); None/'' -> None."""
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from exc
    shard_rows(n, (i, n))  # validates
    return i, n


def check_field(name: str, spec: Any) -> Field:
    """A canonical Field (shape as ints, dtype as numpy's name), checked against its kind's shape rule."""
    if len(spec) != 3:
        raise ValueError(f"field '{name}' declares {tuple(spec)}: expected (shape, dtype, kind) with kind one of "
                         f"{FIELD_KINDS}, so the data pipeline knows how to warp it")
    shape, dtype, kind = spec
    if name in RESERVED:
        raise ValueError(f"field name '{name}' is reserved in cache files ({', '.join(RESERVED)})")
    shape_t = tuple(int(s) for s in shape)
    if any(s <= 0 for s in shape_t):
        raise ValueError(f"field '{name}' has a non-positive dimension in shape {shape_t}")
    dt = np.dtype(dtype)
    if dt.kind not in "biuf":
        raise ValueError(f"field '{name}' has dtype {dt}: cache fields are fixed-size numbers (bool, int, uint, "
                         "float)")
    if kind not in FIELD_KINDS:
        raise ValueError(f"field '{name}' has kind {kind!r}; known kinds: {FIELD_KINDS}")
    wrong = {
        "labels": len(shape_t) != 2 or dt.kind not in "iu",
        "heatmaps": len(shape_t) != 3 or dt.kind != "f",
        "image": len(shape_t) != 3 or shape_t[2] != 3 or dt != np.uint8,
        "vector": False,
    }[kind]
    if wrong:
        rule = {"labels": "(h, w) integer", "heatmaps": "(C, h, w) float", "image": "(h, w, 3) uint8"}[kind]
        raise ValueError(f"field '{name}' of kind {kind!r} must be {rule}, got shape {shape_t} {dt.name}")
    return Field(shape_t, dt.name, kind)


def _norm_fields(fields: Mapping[str, Any]) -> dict[str, Field]:
    """Canonical, checked field specs sorted by name."""
    return {name: check_field(name, spec) for name, spec in sorted(fields.items())}


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class CacheMeta:
    """Provenance of a cache: what ``attrs`` record and what must match to resume or merge."""

    teacher: str
    backend: str
    model_sha256: str
    params: dict[str, Any]
    index_sha256: str
    fields: dict[str, FieldSpec]
    paths: tuple[str, ...] = field(repr=False)
    shard: str = ""  # "i/n" for shard parts, '' for whole caches

    @property
    def num_rows(self) -> int:
        return len(self.paths)

    def attrs(self) -> list[tuple[str, Any]]:
        """Attributes in the fixed order they are written."""
        items: list[tuple[str, Any]] = [
            ("schema_version", np.int64(SCHEMA_VERSION)),
            ("teacher", self.teacher),
            ("backend", self.backend),
            ("model_sha256", self.model_sha256),
            ("params", _json(self.params)),
            ("index_sha256", self.index_sha256),
            ("num_rows", np.int64(self.num_rows)),
            ("fields", _json({k: [list(s), d, kind] for k, (s, d, kind) in self.fields.items()})),
        ]
        if self.shard:
            items.append(("shard", self.shard))
        return items

    def key(self, with_shard: bool = True) -> str:
        """Everything that must agree for two files to hold rows of the same cache."""
        d = dict(self.attrs())
        d.pop("num_rows")
        if not with_shard:
            d.pop("shard", None)
        return _json({k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()})

    def with_shard(self, shard: str) -> "CacheMeta":
        return CacheMeta(self.teacher, self.backend, self.model_sha256, self.params, self.index_sha256,
                         self.fields, self.paths, shard)

    @classmethod
    def from_file(cls, f: h5py.File) -> "CacheMeta":
        a = f.attrs
        missing = [k for k in ("schema_version", "teacher", "index_sha256", "fields") if k not in a]
        if missing:
            raise CacheError(f"{f.filename}: not a reid cache (missing attributes {missing})")
        if int(a["schema_version"]) != SCHEMA_VERSION:
            raise CacheError(f"{f.filename}: schema_version {int(a['schema_version'])}, this code reads "
                             f"{SCHEMA_VERSION}; rebuild the cache")
        try:
            fields = {k: check_field(k, spec) for k, spec in json.loads(_str(a["fields"])).items()}
        except (ValueError, TypeError) as exc:
            raise CacheCorrupt(f"{f.filename}: its field declarations are invalid ({exc})") from exc
        paths = tuple(p.decode("utf-8") for p in f["path"][()])
        return cls(_str(a["teacher"]), _str(a["backend"]), _str(a["model_sha256"]), json.loads(_str(a["params"])),
                   _str(a["index_sha256"]), fields, paths, _str(a.get("shard", "")))


def row_digest(data: np.ndarray | bytes) -> np.ndarray:
    """BLAKE2b-128 of one row's bytes (C order) as 16 uint8: what ``digest`` stores per row and field."""
    raw = data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()
    return np.frombuffer(hashlib.blake2b(raw, digest_size=DIGEST_BYTES).digest(), dtype=np.uint8)


def _path_digests(paths: Sequence[str]) -> np.ndarray:
    return np.stack([row_digest(p.encode("utf-8")) for p in paths]) if paths else np.zeros((0, DIGEST_BYTES),
                                                                                             np.uint8)


def content_digest(meta: "CacheMeta", done: np.ndarray, digests: np.ndarray) -> str:
    """The file-level checksum: provenance, ``done`` and every row digest (hex BLAKE2b-256)."""
    h = hashlib.blake2b(digest_size=32)
    h.update(meta.key().encode("utf-8") + b"\0" + str(meta.num_rows).encode() + b"\0")
    h.update(np.ascontiguousarray(done, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(digests, dtype=np.uint8).tobytes())
    return h.hexdigest()


def _check_header(f: h5py.File, meta: "CacheMeta") -> tuple[np.ndarray, np.ndarray]:
    """Check a finished file's ``content_digest`` and paths; returns (done, digest array). Raises CacheCorrupt."""
    name = f.filename
    try:
        done = f["done"][()]
        digests = f["digest"][()]
        stored = _str(f.attrs["content_digest"])
        for field_name, (shape, dtype, _) in meta.fields.items():
            dset = f[field_name]
            if dset.shape != (meta.num_rows, *shape) or dset.dtype != np.dtype(dtype):
                raise ValueError(f"field '{field_name}' is {dset.shape} {dset.dtype}, its provenance says "
                                 f"{(meta.num_rows, *shape)} {dtype}")
    except DAMAGE as exc:
        raise CacheCorrupt(f"{name}: the checksum datasets cannot be read ({str(exc).splitlines()[0]}); the file "
                           "is damaged or incomplete: delete it and rerun the rule that makes it") from exc
    width = 1 + len(meta.fields)
    if done.shape != (meta.num_rows,) or digests.shape != (meta.num_rows, width, DIGEST_BYTES):
        raise CacheCorrupt(f"{name}: done/digest shapes {done.shape}/{digests.shape} do not fit {meta.num_rows} rows "
                           f"of {len(meta.fields)} fields; the file is damaged")
    if content_digest(meta, done, digests) != stored:
        raise CacheCorrupt(f"{name}: content checksum mismatch (provenance, done flags or row digests changed "
                           "since the file was written); the file is damaged: delete it and rerun the rule that "
                           "makes it")
    bad = np.flatnonzero((_path_digests(meta.paths) != digests[:, 0]).any(axis=1))
    if bad.size:
        raise CacheCorrupt(f"{name}: the image path of row {int(bad[0])} ({meta.paths[int(bad[0])]!r}) does not "
                           f"match its checksum ({bad.size} rows); the file is damaged")
    return done, digests


def close_detached(f: h5py.File) -> None:
    """Close an HDF5 file after a failed write without crashing: HDF5 retries its pending writes at close and
    segfaults when they fail again, so its descriptor is first pointed at /dev/null. The file is to be discarded."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, f.id.get_vfd_handle())
        os.close(null)
        f.close()
    except Exception:  # noqa: BLE001 - best effort: the caller removes the file
        pass


def _first_line(exc: BaseException) -> str:
    """A one-line reason; for an OSError the system's words for its errno (HDF5 puts them on a later line)."""
    if isinstance(exc, OSError) and exc.errno:
        return f"errno {exc.errno}: {os.strerror(exc.errno)}"
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _str(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _paths_array(paths: Sequence[str]) -> np.ndarray:
    encoded = [p.encode("utf-8") for p in paths]
    width = max([1] + [len(p) for p in encoded])
    return np.array(encoded, dtype=f"S{width}")


def _create_layout(f: h5py.File, meta: CacheMeta, done: np.ndarray,
                   digests: np.ndarray | None = None) -> dict[str, h5py.Dataset]:
    """Attributes, ``path``, ``done``, ``digest`` and empty field datasets, always in the same order. Without
    ``digests`` (a work file) only the path column is filled; with them (a finished file) ``content_digest`` too."""
    if meta.num_rows == 0:
        raise CacheError("cannot create a cache for an empty index (0 rows)")
    for key, value in meta.attrs():
        f.attrs[key] = value
    if digests is not None:
        f.attrs["content_digest"] = content_digest(meta, done.astype(np.uint8), digests)
    else:
        digests = np.zeros((meta.num_rows, 1 + len(meta.fields), DIGEST_BYTES), np.uint8)
        digests[:, 0] = _path_digests(meta.paths)
    f.create_dataset("path", data=_paths_array(meta.paths), track_times=False)
    f.create_dataset("done", data=done.astype(np.uint8), track_times=False)
    f.create_dataset("digest", data=digests, track_times=False)
    out = {}
    for name, (shape, dtype, _) in meta.fields.items():
        out[name] = f.create_dataset(
            name, shape=(meta.num_rows, *shape), dtype=dtype, chunks=(1, *shape), compression=COMPRESSION,
            compression_opts=COMPRESSION_LEVEL, shuffle=True, track_times=False)
    return out


def _chunk_allocated(dset: h5py.Dataset, row: int) -> bool:
    info = dset.id.get_chunk_info_by_coord((row,) + (0,) * (dset.ndim - 1))
    return info.byte_offset is not None


def _write_canonical(dst: Path, meta: CacheMeta, sources: Sequence[tuple[h5py.File, np.ndarray]]) -> None:
    """Write ``dst`` from scratch in canonical order, copying compressed chunks from the first source owning a row.

    ``sources`` are (open file, done mask) pairs with identical provenance and compatible field layouts.
    """
    owner = np.full(meta.num_rows, -1, dtype=np.int64)
    for k, (_, done) in enumerate(sources):
        owner[(done == 1) & (owner < 0)] = k
    rows = np.flatnonzero(owner >= 0)
    digests = np.zeros((meta.num_rows, 1 + len(meta.fields), DIGEST_BYTES), np.uint8)
    digests[:, 0] = _path_digests(meta.paths)
    source_digests = [f["digest"][()] for f, _ in sources]
    for row in rows:
        digests[row] = source_digests[owner[row]][row]
    out = h5open(dst, "w")
    try:
        dsets = _create_layout(out, meta, (owner >= 0).astype(np.uint8), digests)
        for name, dset in dsets.items():
            zeros = (0,) * (dset.ndim - 1)
            for row in rows:
                src = sources[owner[row]][0][name]
                mask, chunk = src.id.read_direct_chunk((int(row),) + zeros)
                dset.id.write_direct_chunk((int(row),) + zeros, chunk, mask)
        out.close()
    except OSError as exc:
        close_detached(out)
        dst.unlink(missing_ok=True)
        raise CacheError(f"{dst}: writing the finished cache failed ({_first_line(exc)}); nothing was published "
                         "and the work file is kept: fix the cause (free space) and rerun to finish") from None


def _replace_verified(tmp: Path, out: Path, meta: CacheMeta) -> None:
    """Check the freshly written file reads back with the same provenance and every done row matches its digest,
    then rename it onto ``out``; a damaged file is removed, never published."""
    try:
        with h5open(tmp, "r") as f:
            back = CacheMeta.from_file(f)
            if back.key() != meta.key() or back.num_rows != meta.num_rows:
                raise CacheError(f"{tmp}: verification failed, provenance read back differs from what was written")
            done, digests = _check_header(f, back)
            bad = _verify_rows(f, back, digests, np.flatnonzero(done))
        if bad:
            row, _, why = bad[0]
            raise CacheCorrupt(f"{tmp}: {len(bad)} rows do not read back as written (first: row {row}: {why}); "
                               "the work file was damaged on disk: delete it and run again")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)


def _verify_rows(f: h5py.File, meta: CacheMeta, digests: np.ndarray, rows: np.ndarray,
                 block: int = 256) -> list[tuple[int, str, str]]:
    """(row, image path, why) for each of ``rows`` whose data cannot be read or does not match its digest."""
    bad: list[tuple[int, str, str]] = []
    names = list(meta.fields)
    for start in range(0, len(rows), block):
        chunk = rows[start:start + block]
        for k, name in enumerate(names):
            try:
                data = f[name][chunk] if len(chunk) else None
            except DAMAGE:
                data = None
            for j, row in enumerate(chunk):
                try:
                    value = data[j] if data is not None else f[name][int(row)]
                except DAMAGE as exc:
                    bad.append((int(row), meta.paths[row], f"field '{name}' unreadable "
                                                           f"({str(exc).splitlines()[0]})"))
                    continue
                if not np.array_equal(row_digest(np.asarray(value, dtype=meta.fields[name].dtype)),
                                      digests[row, 1 + k]):
                    bad.append((int(row), meta.paths[row], f"field '{name}' does not match its checksum"))
    return sorted(set(bad))


class CacheWriter:
    """Write rows of one cache (or one shard part) into ``<out>.tmp``; ``finalize`` publishes ``<out>``.

    Use as a context manager: leaving the block without ``finalize`` (e.g. on an exception) flushes the rows
    written so far and keeps ``<out>.tmp`` so the next run resumes from it.
    """

    def __init__(self, out: str | Path, *, teacher: str, backend: str, model_sha256: str,
                 params: Mapping[str, Any], index_sha256: str, paths: Sequence[str],
                 fields: Mapping[str, Any], shard: tuple[int, int] | None = None, flush_every_s: float = 10.0,
                 rows: Sequence[int] | None = None):
        """`rows`: the rows of shard `shard` when they are not its contiguous range (isp_labels shards whole
        identities); the parts of all shards must still cover every row exactly once (merge_shards checks)."""
        self.out = Path(out)
        self.tmp = tmp_path(self.out)
        if rows is not None and shard is None:
            raise ValueError("CacheWriter: explicit rows belong to a shard (pass shard=(i, n))")
        self.rows = sorted(int(r) for r in rows) if rows is not None else shard_rows(len(paths), shard)
        self._row_array = np.asarray(list(self.rows), dtype=np.int64)
        self._row_set = set(self.rows)
        self.meta = CacheMeta(teacher, backend, model_sha256, json.loads(_json(dict(params))), index_sha256,
                              _norm_fields(fields), tuple(paths), f"{shard[0]}/{shard[1]}" if shard else "")
        self.flush_every_s = flush_every_s
        self._unflagged: list[np.ndarray] = []
        self._last_flush = time.monotonic()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.resumed_rows = 0
        self._lock = ExitStack()  # one writer per output: held until close / finalize, released if opening fails
        self._lock.enter_context(exclusive_lock(self.out, "cache"))
        self._f = None
        try:
            self._f = self._open_or_resume()
        except BaseException:
            self._lock.close()
            raise
        self._dsets = {name: self._f[name] for name in self.meta.fields}
        self._done = self._f["done"][()]

    # --- opening ----------------------------------------------------------------------------------------
    def _open_or_resume(self) -> h5py.File:
        if self.tmp.exists():
            f = self._try_resume()
            if f is not None:
                return f
            self.tmp.unlink()
        f = h5open(self.tmp, "w")
        _create_layout(f, self.meta, np.zeros(self.meta.num_rows, np.uint8))
        f.flush()
        return f

    def _try_resume(self) -> h5py.File | None:
        try:
            f = h5open(self.tmp, "r+")
        except OSError as exc:
            log.warning("%s is unreadable (%s); starting over", self.tmp, exc)
            return None
        try:
            found = CacheMeta.from_file(f)
            if "digest" not in f:
                raise CacheError("no row digests")
        except (CacheError, KeyError, ValueError, OSError) as exc:
            found, why = None, str(exc)
        else:
            why = "provenance differs" if found.key() != self.meta.key() or found.paths != self.meta.paths else ""
        if found is None or why:
            log.warning("%s does not match this run (%s: old %s, new %s); starting over", self.tmp, why,
                        found.key() if found else "?", self.meta.key())
            f.close()
            return None
        self._validate_done(f)
        self.resumed_rows = int(f["done"][()][self._row_array].sum())
        log.info("resuming %s: %d of %d rows already done", self.tmp, self.resumed_rows, len(self.rows))
        return f

    def _validate_done(self, f: h5py.File) -> None:
        """Unmark rows whose chunks were never allocated (a kill between flushes of an older HDF5 state) or whose
        data no longer matches its digest (a disk that filled up mid-write, a damaged work file)."""
        done = f["done"][()]
        rows = np.flatnonzero(done)
        bad = [int(r) for r in rows if not all(_chunk_allocated(f[n], int(r)) for n in self.meta.fields)]
        try:
            digests = f["digest"][()]
            bad += [r for r, _, _ in _verify_rows(f, self.meta, digests, np.setdiff1d(rows, bad))]
        except OSError as exc:
            raise CacheCorrupt(f"{self.tmp}: its digests cannot be read ({exc})") from exc
        if bad:
            bad = sorted(set(bad))
            log.warning("%s: %d rows marked done have no data or damaged data (first: %s); recomputing them",
                        self.tmp, len(bad), bad[:5])
            done[bad] = 0
            f["done"][...] = done
            f.flush()

    # --- writing ----------------------------------------------------------------------------------------
    def pending_rows(self) -> np.ndarray:
        """Rows of this writer's range not yet done (to compute)."""
        return np.array([r for r in self.rows if not self._done[r]], dtype=np.int64)

    def write_rows(self, rows: Sequence[int] | np.ndarray, values: Mapping[str, np.ndarray]) -> None:
        """Store one batch: ``values[field]`` has shape (len(rows), *shape); rows are marked done at next flush."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self._check_batch(rows, values)
        self._check_space(sum(np.asarray(v).nbytes for v in values.values()))
        with self._guard():
            self._write(rows, values)
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def _check_space(self, batch_bytes: int) -> None:
        """Stop cleanly before HDF5 meets a full disk (it cannot recover from a failed write): the work file is
        flushed, stays consistent and resumes once space is freed."""
        need = 2 * batch_bytes + SPACE_MARGIN_BYTES
        free = shutil.disk_usage(self.tmp.parent).free
        if free < need:
            self.flush()
            raise CacheError(f"{self.tmp}: only {free / 2**20:.0f} MiB free on its disk, {need / 2**20:.0f} MiB "
                             f"needed for the next rows; free space and rerun: the {self.num_done} rows written so "
                             "far resume")

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """A failed HDF5 write (disk full, file size limit, I/O error) leaves the library unable to close the file
        without crashing the process: detach the file from its descriptor, close it, remove the work file (its
        metadata may be inconsistent) and raise a clean error naming it."""
        try:
            yield
        except OSError as exc:
            self._abandon()
            raise CacheError(f"{self.tmp}: writing failed ({_first_line(exc)}); the work file was removed, as a "
                             "failed HDF5 write can leave it inconsistent: fix the cause (free space) and rerun"
                             ) from None

    def _abandon(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            close_detached(f)
        self.tmp.unlink(missing_ok=True)
        self._lock.close()

    def _write(self, rows: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
        digests = self._f["digest"]
        for k, (name, (_, dtype, _)) in enumerate(self.meta.fields.items()):
            data = np.ascontiguousarray(np.asarray(values[name]).astype(dtype, copy=False))
            dset = self._dsets[name]
            for j, row in enumerate(rows):
                dset[int(row)] = data[j]
                digests[int(row), 1 + k] = row_digest(data[j])
        self._unflagged.append(rows)

    def _check_batch(self, rows: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
        outside = [int(r) for r in rows if int(r) not in self._row_set]
        if outside:
            raise IndexError(f"{self.out}: rows {outside[:5]} outside this writer's range {self.rows}")
        missing = sorted(set(self.meta.fields) - set(values))
        extra = sorted(set(values) - set(self.meta.fields))
        if missing or extra:
            raise KeyError(f"{self.out}: batch fields differ from the declared fields: missing {missing}, "
                           f"unexpected {extra}")
        for name, (shape, dtype, _) in self.meta.fields.items():
            v = np.asarray(values[name])
            if v.shape != (len(rows), *shape):
                raise ValueError(f"{self.out}: field '{name}' has batch shape {v.shape}, expected "
                                 f"{(len(rows), *shape)}")
            if not np.can_cast(v.dtype, dtype, casting="same_kind"):
                raise TypeError(f"{self.out}: field '{name}' has dtype {v.dtype}, cannot store as {dtype}")

    def flush(self) -> None:
        """Make written rows durable: flush data first, then mark them done and flush again."""
        if self._f is None:
            raise CacheError(f"{self.tmp}: the writer was abandoned after a failed write")
        with self._guard():
            self._f.flush()
            if self._unflagged:
                rows = np.unique(np.concatenate(self._unflagged))
                self._done[rows] = 1
                self._f["done"][...] = self._done
                self._unflagged.clear()
                self._f.flush()
        self._last_flush = time.monotonic()

    @property
    def num_done(self) -> int:
        return int(self._done[self._row_array].sum()) + sum(len(r) for r in self._unflagged)

    def close(self) -> None:
        """Flush and close the work file, keeping it for a later resume; release the output's lock."""
        try:
            if self._f is not None and self._f.id.valid:
                self.flush()
                self._f.close()
        finally:
            self._lock.close()

    def finalize(self) -> Path:
        """Check every row of the range is done, write the canonical file, rename it to ``<out>``."""
        self.flush()
        self._check_space(os.path.getsize(self.tmp))
        missing = [r for r in self.rows if not self._done[r]]
        if missing:
            raise CacheError(f"{self.tmp}: {len(missing)} of {len(self.rows)} rows not written "
                             f"(first: {missing[:5]}); run again to resume")
        final_tmp = self.out.with_name(self.out.name + ".final.tmp")
        _write_canonical(final_tmp, self.meta, [(self._f, self._done)])
        self._f.close()
        _replace_verified(final_tmp, self.out, self.meta)
        self.tmp.unlink()
        self._lock.close()
        return self.out

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def merge_shards(parts: Sequence[str | Path], out: str | Path) -> Path:
    """Join shard parts (any order) into ``out``, byte-identical to a single unsharded run (one writer at a time)."""
    with exclusive_lock(out, "cache"):
        return _merge_shards(parts, out)


def _merge_shards(parts: Sequence[str | Path], out: str | Path) -> Path:
    if not parts:
        raise CacheError("merge_shards: no parts given")
    files = [h5open(p, "r") for p in parts]
    try:
        metas = [CacheMeta.from_file(f) for f in files]
        for f, m in zip(files, metas):
            _check_header(f, m)
        ref = metas[0]
        for p, m in zip(parts, metas):
            if m.key(with_shard=False) != ref.key(with_shard=False) or m.paths != ref.paths:
                raise CacheError(f"cannot merge {p} with {parts[0]}: provenance differs "
                                 f"({m.key(False)} vs {ref.key(False)})")
        dones = [f["done"][()] for f in files]
        count = np.sum(dones, axis=0)
        if (count > 1).any():
            raise CacheError(f"shard parts overlap on {int((count > 1).sum())} rows (same part given twice?): "
                             f"{[m.shard for m in metas]}")
        if (count == 0).any():
            gap = np.flatnonzero(count == 0)
            raise CacheError(f"shard parts leave {len(gap)} of {ref.num_rows} rows undone (first: "
                             f"{gap[:5].tolist()}); parts given: {[m.shard for m in metas]}")
        whole = ref.with_shard("")
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        final_tmp = out.with_name(out.name + ".final.tmp")
        _write_canonical(final_tmp, whole, list(zip(files, dones)))
    finally:
        for f in files:
            f.close()
    if out.is_file() and _same_bytes(final_tmp, out):
        final_tmp.unlink()  # unchanged (e.g. only the shard count changed): keep the file and its time, so
        return out          # neither Snakemake (mtime) nor DVC (hash) reruns what depends on it
    _replace_verified(final_tmp, out, whole)
    return out


def _same_bytes(a: Path, b: Path, block: int = 1 << 20) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(block), fb.read(block)
            if x != y:
                return False
            if not x:
                return True


class CacheReader:
    """Row access to a finished cache; safe to hand to DataLoader workers (the HDF5 handle is per process)."""

    def __init__(self, path: str | Path, index_path: str | Path | None = None, fields: Iterable[str] | None = None,
                 expected_teacher: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            hint = f" (an interrupted run left {tmp_path(self.path)}; rerun to resume)" if tmp_path(
                self.path).exists() else ""
            raise FileNotFoundError(f"cache not found: {self.path}{hint}")
        with h5open(self.path, "r") as f:
            try:
                self.meta = CacheMeta.from_file(f)
            except DAMAGE as exc:
                raise CacheCorrupt(f"{self.path}: its provenance cannot be read ({str(exc).splitlines()[0]}); the "
                                   "file is damaged: delete it and rerun the rule that makes it") from exc
            if self.meta.shard:  # a part's digest covers only its own rows: name the real problem first
                raise CacheError(f"{self.path} is shard part {self.meta.shard}; join the parts with "
                                 f"`python -m reid merge-shards --out FILE PARTS...`")
            done, self._digests = _check_header(f, self.meta)
        self._check(done, index_path, expected_teacher)
        self._columns = {name: 1 + k for k, name in enumerate(self.meta.fields)}
        self.fields = list(fields) if fields is not None else list(self.meta.fields)
        unknown = [k for k in self.fields if k not in self.meta.fields]
        if unknown:
            raise CacheError(f"{self.path}: no field(s) {unknown}; the cache has {list(self.meta.fields)}")
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._dsets: dict[str, h5py.Dataset] = {}

    def _check(self, done: np.ndarray, index_path: str | Path | None, expected_teacher: str | None) -> None:
        m = self.meta
        if expected_teacher is not None and m.teacher != expected_teacher:
            raise CacheError(f"{self.path} holds teacher '{m.teacher}', expected '{expected_teacher}'")
        if m.shard:
            raise CacheError(f"{self.path} is shard part {m.shard}; join the parts with "
                             f"`python -m reid merge-shards --out FILE PARTS...`")
        if not done.all():
            raise CacheError(f"{self.path}: only {int(done.sum())} of {len(done)} rows done; the cache is "
                             f"incomplete, rebuild it")
        if index_path is not None:
            found = file_sha256(index_path)  # = reid.data.index.index_sha256
            if found != m.index_sha256:
                raise CacheIndexMismatch(
                    f"{self.path} was built for an index with sha256 {m.index_sha256}, but {index_path} has sha256 "
                    f"{found}. The index changed after the cache was made: rebuild the cache "
                    f"(`python -m reid teach --teacher {m.teacher} --backend {m.backend} --index {index_path} ...`, "
                    f"or let snakemake / dvc repro rerun the rule).")

    # --- per-process handle -------------------------------------------------------------------------------
    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5open(self.path, "r")  # a handle inherited through fork is not reused
            self._pid = os.getpid()
            # dataset handles looked up once per process: a group lookup per field and row was the loader's
            # largest cost for multi-field caches (benchmarks/bench_data_wait.py)
            try:
                self._dsets = {k: self._file[k] for k in self.meta.fields}
            except DAMAGE as exc:
                raise CacheCorrupt(f"{self.path}: a field cannot be opened ({exc}); the file is damaged") from exc
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_pid"], state["_dsets"] = None, None, {}
        return state

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid, self._dsets = None, None, {}

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # --- access -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.meta.num_rows

    @property
    def paths(self) -> tuple[str, ...]:
        return self.meta.paths

    @property
    def kinds(self) -> dict[str, str]:
        """Field name -> kind (FIELD_KINDS): how the data pipeline augments it."""
        return {k: spec.kind for k, spec in self.meta.fields.items()}

    @property
    def attrs(self) -> dict[str, Any]:
        """Decoded provenance: params and fields as dicts, numbers as ints."""
        out = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self.meta.attrs()}
        out["params"] = self.meta.params
        out["fields"] = {k: {"shape": list(s), "dtype": d, "kind": kind}
                         for k, (s, d, kind) in self.meta.fields.items()}
        return out

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for {self.path} ({n} rows)")
        self._h5()
        row = int(i) % n
        try:
            out = {k: self._dsets[k][row] for k in self.fields}
        except DAMAGE as exc:
            raise CacheCorrupt(f"{self.path}: row {row} ({self.paths[row]}) cannot be read ({exc}); "
                               "the file is damaged: delete it and rerun the rule that makes it") from exc
        for k, value in out.items():
            self._check_row(k, row, value)
        return out

    def _check_row(self, name: str, row: int, value: np.ndarray) -> None:
        if not np.array_equal(row_digest(value), self._digests[row, self._columns[name]]):
            raise CacheCorrupt(f"{self.path}: row {row} ({self.paths[row]}) field '{name}' does not match its "
                               "checksum; the file is damaged: delete it and rerun the rule that makes it "
                               f"(`python -m reid verify {self.path}` lists every damaged row)")

    def read(self, field_name: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Batched read of one field for any rows (any order, repeats allowed)."""
        if field_name not in self.meta.fields:
            raise CacheError(f"{self.path}: no field '{field_name}'; the cache has {list(self.meta.fields)}")
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows out of range for {self.path} ({len(self)} rows)")
        uniq, inverse = np.unique(rows, return_inverse=True)  # h5py needs increasing indices
        try:
            data = self._h5()[field_name][uniq] if uniq.size else np.empty(
                (0, *self.meta.fields[field_name][0]), self.meta.fields[field_name][1])
        except DAMAGE as exc:
            raise CacheCorrupt(f"{self.path}: field '{field_name}' cannot be read for rows {uniq[:5].tolist()}... "
                               f"({exc}); the file is damaged: `python -m reid verify {self.path}` lists the rows"
                               ) from exc
        for j, row in enumerate(uniq):
            self._check_row(field_name, int(row), data[j])
        return data[inverse]

    def verify(self, block: int = 256) -> list[tuple[int, str, str]]:
        """Read every row of every field and check it against its digest; (row, image path, why) per bad row."""
        return _verify_rows(self._h5(), self.meta, self._digests, np.arange(len(self)), block)


LABEL_HINTS = ("label",)


def _field_stats(dset: h5py.Dataset, name: str, done_rows: np.ndarray, block: int = 256) -> dict[str, Any]:
    """min/max/mean (NaN-aware) over done rows; a histogram for uint8 label fields; detection rate for has_face."""
    dtype = dset.dtype
    stats: dict[str, Any] = {"shape": list(dset.shape[1:]), "dtype": dtype.name}
    lo, hi, total, count, nan = np.inf, -np.inf, 0.0, 0, 0
    hist = np.zeros(256, dtype=np.int64)
    is_label = dtype == np.uint8 and any(h in name for h in LABEL_HINTS)
    for start in range(0, len(done_rows), block):
        x = dset[done_rows[start:start + block]]
        xf = x.astype(np.float64)
        finite = np.isfinite(xf)
        nan += int((~finite).sum())
        if finite.any():
            lo, hi = min(lo, float(xf[finite].min())), max(hi, float(xf[finite].max()))
            total += float(xf[finite].sum())
            count += int(finite.sum())
        if is_label:
            hist += np.bincount(x.reshape(-1), minlength=256)
    stats.update(min=lo if count else None, max=hi if count else None, mean=total / count if count else None)
    if nan:
        stats["nan_fraction"] = nan / max(1, nan + count)
    if is_label:
        top = int(np.flatnonzero(hist).max()) + 1 if hist.any() else 0
        stats["histogram"] = {int(k): float(hist[k] / hist.sum()) for k in range(top)}
    if name == "has_face":
        stats["detection_rate"] = stats["mean"]
    return stats


def describe(path: str | Path, max_rows: int | None = None) -> dict[str, Any]:
    """Provenance + per-field statistics of a cache (also works on incomplete work files and shard parts).

    ``max_rows`` bounds the time on large caches: statistics then use that many evenly spaced done rows.
    """
    with h5open(path, "r") as f:
        meta = CacheMeta.from_file(f)
        done = f["done"][()]
        rows = np.flatnonzero(done)
        if max_rows is not None and len(rows) > max_rows:
            rows = rows[np.linspace(0, len(rows) - 1, max_rows).round().astype(np.int64)]
        prov = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in meta.attrs()}
        prov["params"] = meta.params
        prov.pop("fields")
        return {
            "path": str(path),
            "provenance": prov,
            "num_rows": meta.num_rows,
            "rows_done": int(done.sum()),
            "stats_rows": len(rows),
            "fields": {name: _field_stats(f[name], name, rows) for name in meta.fields},
        }
