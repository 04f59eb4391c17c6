"""Teachers: auxiliary models run once per dataset into HDF5 caches (base class, registry, batched runner)."""

from reid.teachers.base import (
    TEACHERS,
    ImageReadError,
    MissingWeights,
    Teacher,
    build_teacher,
    file_sha256,
    read_image,
    require_weights,
)

__all__ = [
    "TEACHERS",
    "ImageReadError",
    "MissingWeights",
    "Teacher",
    "build_teacher",
    "file_sha256",
    "read_image",
    "require_weights",
]
