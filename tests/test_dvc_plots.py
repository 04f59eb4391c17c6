"""`dvc plots show` through the project's page: offline (no CDN script), built plots drawn, unbuilt ones named
instead of drawn empty, images included; the page is what .dvc/config names."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reid.pipeline.dvc_plots import TEMPLATE, page, write_template

REPO = Path(__file__).resolve().parents[1]
DVC = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))


def test_the_repository_config_names_the_page() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / ".dvc" / "config")
    assert (REPO / ".dvc" / cfg["plots"]["html_template"]) == REPO / TEMPLATE
    assert "/plots_template.html" in (REPO / ".dvc" / ".gitignore").read_text().split()  # generated, not committed


def test_the_page_keeps_dvc_placeholders_and_loads_nothing() -> None:
    text = page()
    assert "{plot_divs}" in text and "{refresh_tag}" in text
    assert "{scripts}" not in text  # DVC would insert its CDN <script src=...> tags there
    assert not re.search(r"<script[^>]+src=", text)
    assert "window.vegaEmbed=" in text.replace(" ", "")  # the inlined bundle defines what DVC's panels call


def _spec(html: str, div_id: str) -> dict:
    m = re.search(r'<div id = "' + re.escape(div_id) + r'">\s*<script type = "text/javascript">\s*var spec = (.*?);\s*'
                  r"vegaEmbed", html, re.S)
    assert m, div_id
    return json.loads(m.group(1))


def test_dvc_plots_show_renders_offline_and_names_what_is_not_built(tmp_path: Path) -> None:
    """A scratch DVC repository with two runs' plots, one built: the page has no script loaded from anywhere, the
    built run's CMC spec carries its rows and renders (vl-convert runs the same Vega libraries offline), its PNG is
    embedded, and the unbuilt run's panel is an empty spec, which the page's wrapper hides and lists."""
    import vl_convert

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True)
    with open(tmp_path / ".dvc" / "config", "a") as f:
        f.write("[plots]\n    html_template = plots_template.html\n")
    write_template(tmp_path)
    built = tmp_path / "results" / "built"
    built.mkdir(parents=True)
    (built / "cmc.csv").write_text("rank,cross_clothes\n" + "".join(f"{r},{min(100, 10 * r)}\n" for r in range(1, 11)))
    from PIL import Image

    Image.new("RGB", (8, 4), (200, 30, 30)).save(built / "ranks.png")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        + "".join(f"  evaluate-{run}:\n    cmd: 'true'\n    plots:\n"
                  f"    - results/{run}/cmc.csv:\n        cache: false\n        x: rank\n        y: cross_clothes\n"
                  f"        title: CMC of {run}\n    - results/{run}/ranks.png:\n        cache: false\n"
                  for run in ("built", "missing")))
    out = tmp_path / "plots"
    run = subprocess.run([DVC, "plots", "show", "-o", str(out)], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    html = (out / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=", html) and "cdn.jsdelivr" not in html
    assert 'id="reid-not-built"' in html
    spec = _spec(html, "results_built_cmc_csv")
    assert len(spec["data"]["values"]) == 10 and spec["title"]["text"] == "CMC of built"
    svg = vl_convert.vegalite_to_svg(spec)
    assert svg.count("<path") > 5  # axes, ticks and the curve
    assert _spec(html, "results_missing_cmc_csv") == {}  # what the wrapper skips and names
    assert re.search(r'<img src="static/[^"]*built_ranks\.png"', html)
    assert not list((out / "static").glob("*missing*"))
