"""`python -m reid verify CACHE...`: read every row of every field of a cache, check it against the row's
checksum, and list the damaged ones.

HDF5 compresses each row as its own chunk, so a damaged file often opens and fails only on the rows whose
bytes were hit, or (a broken chunk index) reads back the fill value without any error; the per-row digests
(reid/cache/h5.py) catch both. This reads every row up front instead of letting a training job fail hours in.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reid.cache.h5 import CacheError, CacheReader


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("caches", nargs="+", type=Path, help="cache files (.h5)")
    p.add_argument("--index", type=Path, help="also check each cache was built for this index CSV")


def main(args: argparse.Namespace) -> int:
    failures = 0
    for path in args.caches:
        try:
            reader = CacheReader(path, index_path=args.index)
            bad = reader.verify()
        except (CacheError, FileNotFoundError) as exc:
            print(f"FAIL {path}: {exc}")
            failures += 1
            continue
        if bad:
            failures += 1
            print(f"FAIL {path}: {len(bad)} of {len(reader)} rows damaged (unreadable or not matching their checksum)")
            for row, image, error in bad[:50]:
                print(f"  row {row} ({image}): {error}")
            if len(bad) > 50:
                print(f"  ... and {len(bad) - 50} more")
        else:
            print(f"OK   {path}: all {len(reader)} rows of {len(reader.meta.fields)} fields read and match their checksums")
    return 1 if failures else 0
