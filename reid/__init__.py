"""reid: teacher-cached person re-identification training as a reproducible DAG."""

__version__ = "0.1.0"
