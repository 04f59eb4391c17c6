"""reid: teacher-cached person re-identification training as a reproducible DAG."""

__version__ = "0.1.0"

# OpenCV's own thread pool is not fork-safe: a pool created in a parent process can deadlock a forked DataLoader
# or decode worker (seen as a hang in cv2 calls inside workers). The parallelism here comes from worker processes,
# so OpenCV runs single-threaded everywhere in this package.
try:
    import cv2 as _cv2

    _cv2.setNumThreads(1)
except ImportError:  # pragma: no cover - opencv is a declared dependency
    pass
