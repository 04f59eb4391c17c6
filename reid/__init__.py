"""reid: teacher-cached person re-identification training as a reproducible DAG."""

__version__ = "0.1.0"

import os as _os

# The pixel budget of one image (a decompression bomb: a 1 MB PNG can declare 30000 x 30000 pixels, 2.7 GB decoded).
# OpenCV reads its limit once, at its first decode, so it is set before cv2 is imported; reid.data.images names the
# file when a header declares more. Raise it with REID_MAX_IMAGE_PIXELS for unusually large crops.
MAX_IMAGE_PIXELS = int(_os.environ.get("REID_MAX_IMAGE_PIXELS", 50_000_000))
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))

# OpenCV's own thread pool is not fork-safe: a pool created in a parent process can deadlock a forked DataLoader
# or decode worker (seen as a hang in cv2 calls inside workers). The parallelism here comes from worker processes,
# so OpenCV runs single-threaded everywhere in this package.
try:
    import cv2 as _cv2

    _cv2.setNumThreads(1)
except ImportError:  # pragma: no cover - opencv is a declared dependency
    pass
