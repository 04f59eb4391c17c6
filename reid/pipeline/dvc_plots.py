"""The page `dvc plots show` / `dvc plots diff` fill (`.dvc/config`: `plots.html_template`).

Why not DVC's own: it loads Vega, Vega-Lite and vega-embed from a CDN, so the page is blank offline (a cluster
node, a laptop on a train), and it draws an empty panel for every plot whose run is not built yet (after
`make demo`, 11 of 14). This page inlines the three libraries (vl-convert's bundle of them, pinned with the
environment) and lists the plots not built yet in one line instead of drawing them empty.

The page is generated (about 0.9 MB of JavaScript), not committed: `make install` writes it with
`python -m reid dvc-yaml --plots-page`.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE = Path(".dvc") / "plots_template.html"  # relative to the repository root; .dvc/config names it
_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")  # what DVC's renderer substitutes in a template

# DVC's vega renderer writes each panel as `<div id=...><script>var spec = {...}; vegaEmbed('#id', spec)</script>`,
# with `spec = {}` when the plot's file does not exist in that revision. The wrapper skips those and names them.
_WRAPPER = """
(function () {
  var embed = window.vegaEmbed, missing = [];
  window.vegaEmbed = function (el, spec, opts) {
    if (!spec || Object.keys(spec).length === 0) {
      var div = document.querySelector(el);
      if (div) { div.style.display = "none"; }
      missing.push(el.replace(/^#/, ""));
      return Promise.resolve(null);
    }
    return embed(el, spec, Object.assign({renderer: "svg",
                                          actions: {export: true, source: false, compiled: false, editor: false}},
                                         opts || {}));
  };
  window.addEventListener("DOMContentLoaded", function () {
    var note = document.getElementById("reid-not-built");
    if (note && missing.length) {
      note.textContent = "Not built yet (dvc repro or snakemake makes them): " + missing.join(", ");
    }
  });
})();
"""

_PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>reid-teachercache: DVC plots</title>
    <script type="text/javascript">
__BUNDLE__
    </script>
    <script type="text/javascript">
__WRAPPER__
    </script>
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
        #reid-not-built { color: #666; }
    </style>
</head>
<body>
    <p id="reid-not-built"></p>
    {plot_divs}
</body>
</html>
"""


def page() -> str:
    """The template's text: DVC's placeholders `{refresh_tag}` and `{plot_divs}` (no `{scripts}`, so none of the
    renderers' CDN script tags is inserted) around the inlined libraries."""
    import vl_convert

    bundle = vl_convert.javascript_bundle()
    clash = [p for p in _PLACEHOLDERS if p in bundle]
    if clash:  # DVC substitutes with str.replace: a placeholder inside the bundle would be overwritten
        raise RuntimeError(f"vl-convert's JavaScript bundle contains DVC placeholder(s) {clash}; pin another "
                           f"vl-convert-python")
    return _PAGE.replace("__BUNDLE__", bundle).replace("__WRAPPER__", _WRAPPER)


def write_template(root: str | Path = ".") -> Path:
    """Write the template under `root` (atomically: DVC may read it while this runs); returns its path."""
    out = Path(root) / TEMPLATE
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page(), encoding="utf-8")
    tmp.replace(out)
    return out
