"""Methods, one module per paper, each imported on its first lookup in METHODS (not by importing this package).

A stage then imports only its own method's module, and dvc.yaml lists exactly that module among the stage's code
(reid.pipeline.dvc_yaml): editing ISP leaves DeSKPro's stages and ledger rows current. `provides_cache` is
declared here so the pipeline can lay out derived caches without importing every method; registration checks it
against the class.
"""

from reid.methods.base import METHODS, Method, build_method

# method name -> (module that registers it, the derived cache its trained model makes)
BUILTIN_METHODS: dict[str, tuple[str, str | None]] = {
    "baseline": ("reid.methods.baseline", None),
    "deskpro": ("reid.methods.deskpro", None),
    "deskpro_face_teacher": ("reid.methods.deskpro", "face_teacher"),
    "isp": ("reid.methods.isp", None),
    "pgfl_kd": ("reid.methods.pgfl_kd", None),
    "sureid": ("reid.methods.sureid", None),
    "sureid_teacher": ("reid.methods.sureid", "vit_teacher"),
}
for _name, (_module, _cache) in BUILTIN_METHODS.items():
    METHODS.declare(_name, _module, provides_cache=_cache)

__all__ = ["BUILTIN_METHODS", "METHODS", "Method", "build_method"]
