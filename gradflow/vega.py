"""The HTML page `dvc plots show` and `dvc plots diff` fill, with Vega, Vega-Lite and Vega-Embed
inlined from the installed vl-convert-python, so every chart draws offline.

Why our own page: DVC's default page loads the three scripts from a CDN, and with no network
its Vega charts stay blank (no error). `.dvc/config` points `plots.html_template` at this page
(paths.PLOTS_PAGE, in `.dvc/tmp/`, which DVC's own .gitignore keeps out of git); the check and
plots stages write it when it is missing or was made by another vl-convert version. The page has
no `{scripts}` placeholder, so DVC's CDN tags are never added to it.
"""

from __future__ import annotations

import base64
import html

from gradflow import paths
from gradflow.files import write_text

STAMP = "<!-- gradflow offline page, vl-convert-python {} -->"

PAGE = """<!DOCTYPE html>
<html>
<head>
{stamp}
{{refresh_tag}}
<meta charset="utf-8">
<title>DVC plots (offline)</title>
<script src="data:text/javascript;base64,{bundle}"></script>
<style>table {{ border-spacing: 15px; }}</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def page_is_current() -> bool:
    import vl_convert
    if not paths.PLOTS_PAGE.is_file():
        return False
    with open(paths.PLOTS_PAGE, encoding="utf-8", errors="replace") as f:
        return STAMP.format(html.escape(vl_convert.__version__)) in f.read(300)


def write_page() -> bool:
    """Write the page unless it is already there for this vl-convert; True when written."""
    import vl_convert  # only here: building the bundle takes a few seconds
    if page_is_current():
        return False
    bundle = vl_convert.javascript_bundle()  # defines window.vegaEmbed, window.vega, window.vegaLite
    # As a data: URL, not inline: the bundle holds `<!--` and `<script` in its strings, which
    # end an inline script early in an HTML parser; base64 also holds none of the placeholders
    # DVC replaces anywhere in the page.
    encoded = base64.b64encode(bundle.encode("utf-8")).decode("ascii")
    stamp = STAMP.format(html.escape(vl_convert.__version__))
    write_text(paths.PLOTS_PAGE, PAGE.format(stamp=stamp, bundle=encoded))
    return True
