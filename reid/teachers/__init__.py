"""Teachers: auxiliary models run once per dataset into HDF5 caches (base class, registry, batched runner)."""

from reid.data.images import ImageReadError, read_bgr
from reid.teachers.base import (
    TEACHERS,
    MissingWeights,
    Teacher,
    build_teacher,
    file_sha256,
    require_weights,
)

__all__ = [
    "TEACHERS",
    "ImageReadError",
    "MissingWeights",
    "Teacher",
    "build_teacher",
    "file_sha256",
    "read_bgr",
    "require_weights",
]
