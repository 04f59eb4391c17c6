"""Evaluation: ranking metrics (CMC, mAP, mINP; standard / cloth-changing / same-clothes) and named protocols."""

from reid.eval.metrics import MODES, evaluate, evaluate_features, pairwise_distance
from reid.eval.protocols import PROTOCOLS, run_protocol, run_protocol_features

__all__ = ["MODES", "PROTOCOLS", "evaluate", "evaluate_features", "pairwise_distance", "run_protocol",
           "run_protocol_features"]
