"""Methods and pretrain backbones are imported on lookup, so each stage depends on its own method's or backbone's
code only (dvc.yaml, the ledger)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import CFG

from reid.methods import BUILTIN_METHODS
from reid.pipeline import params as C
from reid.pipeline.dvc_yaml import stages_for
from reid.registry import Registry

METHOD_FILES = {module.replace(".", "/") + ".py" for module, _ in BUILTIN_METHODS.values()}


def test_importing_the_package_imports_no_method_and_a_lookup_imports_only_its_own() -> None:
    code = ("import sys\n"
            "import reid.methods\n"
            "from reid.pipeline import params as C\n"
            "before = sorted(m for m in sys.modules if m.startswith('reid.methods.'))\n"
            "C.derived_caches()\n"  # laid out from the declarations, importing nothing
            "reid.methods.METHODS.get('isp')\n"
            "after = sorted(m for m in sys.modules if m.startswith('reid.methods.'))\n"
            "print(before, after)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ("['reid.methods.base'] ['reid.methods.base', 'reid.methods.isp', 'reid.methods.losses']"), out


@pytest.mark.parametrize("name", sorted(BUILTIN_METHODS))
def test_every_declaration_agrees_with_its_class(name: str) -> None:
    from reid.methods.base import METHODS

    module, cache = BUILTIN_METHODS[name]
    cls = METHODS.get(name)
    assert (cls.__module__, cls.provides_cache) == (module, cache)


def test_a_registration_that_contradicts_its_declaration_is_refused() -> None:
    reg: Registry[type] = Registry("thing")
    reg.declare("a", __name__, provides_cache="face_teacher")
    reg.declare("b", "elsewhere.module")

    class A:
        name = "a"
        provides_cache = "vit_teacher"

    class B:
        name = "b"

    with pytest.raises(ValueError, match="disagree with its declaration"):
        reg.register()(A)
    with pytest.raises(KeyError, match="declared in elsewhere.module"):
        reg.register()(B)
    assert reg.names() == ["a", "b"] and "a" in reg and reg.module("b") == "elsewhere.module"
    assert reg.fact("a", "provides_cache") == "face_teacher"  # from the declaration, nothing imported
    with pytest.raises(KeyError, match="unknown thing 'c'; known: a, b"):
        reg.get("c")


def test_derived_caches_name_the_runs_that_make_them() -> None:
    assert C.derived_caches() == {"face_teacher": "deskpro_face_teacher", "vit_teacher": "sureid_teacher"}


@pytest.mark.parametrize("run, own", [("deskpro--pretrained", "reid/methods/deskpro.py"),
                                      ("isp", "reid/methods/isp.py"),
                                      ("pgfl_kd--full", "reid/methods/pgfl_kd.py")])
def test_a_train_stage_depends_on_its_own_method_module_only(run: str, own: str) -> None:
    cfg = CFG
    ds = "synthcc" if run.startswith("deskpro") else "synthocc"
    stages = stages_for(cfg, [f"{ds}/{run}"])
    train = stages[f"train-{ds}-{C.model_run(run)}"]
    assert own in train.code
    assert not (METHOD_FILES - {own}) & set(train.code), sorted((METHOD_FILES - {own}) & set(train.code))
    assert not any("reid/data/render.py" in s.code for s in stages.values() if not s.name.startswith("synth-"))


@pytest.mark.parametrize("arch, own, other", [("osnet_x0_25", "reid/models/osnet.py", "reid/models/vit.py"),
                                              ("deit_small", "reid/models/vit.py", "reid/models/hrnet.py")])
def test_a_pretrain_stage_depends_on_its_own_backbone_module_only(arch: str, own: str, other: str) -> None:
    """ARCHS names each backbone's module, imported by the stage that trains it: a ViT edit leaves OSNet's
    pretrain (and every DeSKPro row started from it) current."""
    from reid.engine.pretrain import ARCHS, build_classifier

    cfg = CFG
    stage = next(s for s in stages_for(cfg, ["synthcc/deskpro--pretrained", "synthocc/sureid--pretrained"]).values()
                 if s.name == f"pretrain-{arch}")
    assert own in stage.code and other not in stage.code
    code = ("import sys\nfrom reid.engine.pretrain import build_classifier\n"
            f"build_classifier({arch!r}, 3, (128, 64))\n"
            "print(sorted(m for m in sys.modules if m.startswith('reid.models.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert ARCHS[arch][0] in loaded and other.removesuffix(".py").replace("/", ".") not in loaded
