"""Reading and writing weight, model and checkpoint files: the one place that calls `torch.load` / `torch.save`.

A `.pth` / `.pt` file is a pickle, and unpickling can run arbitrary code. Every file the pipeline reads (backbone
weights named in params.yaml, teacher checkpoints, `model.pt`, `checkpoint.pt`) goes through `load_file`, which
unpickles with `weights_only=True` (tensors, numbers, strings and plain containers only) or reads a
`.safetensors` file, and turns every failure into an error that names the file.

Damage never passes as data: torch writes a zip archive with a CRC-32 per member but never checks them, so
`load_file` checks every member's CRC before unpickling; and every file the pipeline writes (`save_file`: model.pt,
checkpoint.pt) also carries `content_sha256`, a SHA-256 over its decoded content (keys, dtypes, shapes, bytes),
which `load_file` recomputes. A file that fails either check is a CorruptFileError naming it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["UnsafeFileError", "CorruptFileError", "DIGEST_KEY", "content_sha256", "load_file", "save_file",
           "atomic_write", "read_json", "read_json_file", "write_json_file"]

DIGEST_KEY = "content_sha256"


class UnsafeFileError(ValueError):
    """The file holds pickled Python objects beyond tensors and plain containers: loading it could run code."""


class CorruptFileError(ValueError):
    """The file is truncated, empty or not a PyTorch / safetensors file at all."""


def _feed(h: Any, obj: Any) -> None:
    """Hash `obj` in a canonical, type-tagged order (dict keys sorted), so equal content gives equal digests."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(b"T" + str(t.dtype).encode() + b"(" + ",".join(map(str, t.shape)).encode() + b")")
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update((b"L" if isinstance(obj, list) else b"U") + b"%d" % len(obj))
        for item in obj:
            _feed(h, item)
    elif isinstance(obj, bool) or obj is None:
        h.update(b"B" + repr(obj).encode())
    elif isinstance(obj, int):
        h.update(b"I" + str(obj).encode() + b";")
    elif isinstance(obj, float):
        h.update(b"F" + struct.pack("<d", obj))
    elif isinstance(obj, str):
        raw = obj.encode("utf-8", "surrogatepass")
        h.update(b"S%d:" % len(raw) + raw)
    elif isinstance(obj, bytes):
        h.update(b"Y%d:" % len(obj) + obj)
    else:
        raise TypeError(f"cannot checksum a {type(obj).__name__} (save tensors, numbers, strings and containers)")


def content_sha256(obj: Any) -> str:
    """SHA-256 of a file's decoded content (what `save_file` records and `load_file` checks)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def atomic_write(path: str | Path, write: Any, what: str = "file") -> Path:
    """Call `write(tmp)` on `<path>.tmp`, fsync it and rename it onto `path`: `path` exists only when complete.
    A full disk is an OSError naming the file (the partial `.tmp` is removed), never a half-written `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc):
            raise OSError(errno.ENOSPC, f"no space left on the device writing {what} {path}; free space and rerun "
                                        "(nothing was written)") from exc
        raise
    os.replace(tmp, path)
    return path


def save_file(obj: dict[str, Any], path: str | Path, what: str = "model") -> Path:
    """Write `obj` (a dict of tensors, numbers, strings and containers) to `path` atomically, with its
    `content_sha256`, so `load_file` refuses any later damage."""
    if not isinstance(obj, dict) or DIGEST_KEY in obj:
        raise ValueError(f"save_file: expected a dict without a {DIGEST_KEY!r} key")
    record = {**obj, DIGEST_KEY: content_sha256(obj)}
    return atomic_write(path, lambda tmp: torch.save(record, tmp), what)


def json_sha256(obj: Any) -> str:
    """SHA-256 of a JSON document's canonical form (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def write_json_file(obj: dict[str, Any], path: str | Path) -> Path:
    """Write a JSON document with its `content_sha256` (over the rest), atomically."""
    record = {**obj, DIGEST_KEY: json_sha256(obj)}
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n",
                                                                encoding="utf-8"), "JSON file")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """A JSON file's content; a missing file is a FileNotFoundError, one that does not parse a CorruptFileError,
    each naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path}: damaged {what} (not valid JSON: {exc})") from None


def read_json_file(path: str | Path, what: str = "JSON file") -> dict[str, Any]:
    """A JSON document written by `write_json_file`: a parse error, a missing or a wrong checksum is a
    CorruptFileError naming the file; the checksum key is removed from what is returned."""
    obj = read_json(path, what)
    if not isinstance(obj, dict) or DIGEST_KEY not in obj:
        raise CorruptFileError(f"{path}: no content checksum: damaged, or written by an older version of this "
                               f"project (write it again)")
    stored = obj.pop(DIGEST_KEY)
    if stored != json_sha256(obj):
        raise CorruptFileError(f"{path}: damaged {what} (its content does not match its checksum)")
    return obj


def _check_zip(path: Path, what: str) -> None:
    """Every member's CRC-32 (torch writes them, torch.load ignores them)."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
            UnicodeDecodeError, struct.error, OverflowError, KeyError) as exc:
        raise CorruptFileError(f"{path}: damaged PyTorch {what} file (its archive cannot be read: {exc})") from exc
    if bad is not None:
        raise CorruptFileError(f"{path}: damaged PyTorch {what} file (member {bad!r} does not match its CRC-32): "
                               "restore or rebuild it")


def load_file(path: str | Path, what: str = "weights", require_digest: bool = False) -> Any:
    """Load `path` (`.safetensors`, or a PyTorch file read weights-only) on the CPU; errors name the file.

    A zip-format PyTorch file has its CRCs checked; a file with `content_sha256` has it checked and the key
    removed from what is returned; `require_digest` (files this project writes) refuses a file without one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file as load_safetensors

            return load_safetensors(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - the library raises several types; re-raised with the file
            raise CorruptFileError(f"{path}: not a readable safetensors {what} file ({exc})") from exc
    if path.stat().st_size == 0:
        raise CorruptFileError(f"{path}: empty {what} file")
    try:
        is_zip = zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, ValueError, struct.error) as exc:
        raise CorruptFileError(f"{path}: damaged PyTorch {what} file (its archive cannot be read: {exc})") from exc
    if is_zip:
        _check_zip(path, what)
    elif require_digest:
        raise CorruptFileError(f"{path}: not a zip-format PyTorch {what} file (damaged, or not written by this "
                               "project)")
    obj = _torch_load(path, what)
    if isinstance(obj, dict) and DIGEST_KEY in obj:
        stored = obj.pop(DIGEST_KEY)
        try:
            found = content_sha256(obj)
        except TypeError as exc:
            raise CorruptFileError(f"{path}: damaged {what} file ({exc})") from exc
        if stored != found:
            raise CorruptFileError(f"{path}: damaged {what} file (its content does not match its checksum "
                                   f"{str(stored)[:16]}...): restore or rebuild it")
    elif require_digest:
        raise CorruptFileError(f"{path}: no content checksum: written by an older version of this project or "
                               f"by another tool; rebuild the {what} (rerun the rule that makes it)")
    return obj


def _torch_load(path: Path, what: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text:
            detail = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "global" in line), "")
            raise UnsafeFileError(
                f"{path}: refused: this {what} file holds pickled Python objects besides tensors and plain "
                f"containers (it was crafted or saved that way, or it is damaged), and loading it could run code "
                f"({detail or text.splitlines()[0]}). Only weights-only "
                "files load: save a plain state dict (torch.save(model.state_dict(), ...)) or a .safetensors file."
            ) from exc
        raise CorruptFileError(f"{path}: not a readable PyTorch {what} file ({text.splitlines()[0]})") from exc
    except (EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            UnicodeDecodeError, OverflowError, MemoryError, struct.error) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptFileError(f"{path}: corrupt or truncated PyTorch {what} file ({first})") from exc
