"""The entry point a newcomer types first: `python -m reid --help` and every verb's `--help` print and exit 0."""

from __future__ import annotations

import pytest

from reid.cli import VERBS, main


def test_top_level_help_lists_every_verb(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_prints_its_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    assert f"usage: reid {verb}" in capsys.readouterr().out


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_option_has_help_and_shows_its_default(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    from reid.cli import verb_parser_of

    parser = verb_parser_of(verb)
    bare = [a.option_strings[-1] if a.option_strings else a.dest for a in parser._actions if not a.help]
    assert not bare, f"reid {verb}: options without help: {bare}"
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, "==SUPPRESS==") and not action.required:
            assert f"(default: {action.default})" in out, (verb, action.option_strings)


def test_a_verbs_message_exit_is_one_line_with_the_verb(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """A verb's `raise SystemExit("...")` reads like every other user error: `reid <verb>: error: ...`, exit 1."""
    (tmp_path / "crops").mkdir()
    code = main(["embed", "--model", str(tmp_path / "m.pt"), "--images", str(tmp_path / "crops"), "--split", "query",
                 "--out", str(tmp_path / "e.h5")])
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == "reid embed: error: --split selects rows of an --index; a folder (--images) " \
                                        "has no splits"


def test_show_metrics_names_each_run_by_its_folder(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two rows of one method (results/<ds>/<run>/metrics.json) print under their run names, not both as the
    method's."""
    import json

    for run, m in (("sureid--t4_hts", 1.5), ("sureid--t4_sureid", 2.5)):
        (tmp_path / run).mkdir()
        (tmp_path / run / "metrics.json").write_text(json.dumps({
            "dataset": "synthocc", "method": "sureid", "protocol": "occluded",
            "standard": {"R1": m, "R5": m, "mAP": m, "mINP": m, "num_query": 5}}))
    assert main(["show-metrics", str(tmp_path / "sureid--t4_sureid/metrics.json"),
                 str(tmp_path / "sureid--t4_hts/metrics.json")]) == 0
    titles = [line for line in capsys.readouterr().out.splitlines() if "[occluded]" in line]
    assert titles == ["synthocc/sureid--t4_hts [occluded]", "synthocc/sureid--t4_sureid [occluded]"]
