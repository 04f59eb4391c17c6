"""Methods, one module per paper; importing this package registers them all in METHODS."""

from reid.methods import baseline, deskpro, isp, pgfl_kd, sureid  # noqa: F401
from reid.methods.base import METHODS, Method, build_method

__all__ = ["METHODS", "Method", "build_method"]
