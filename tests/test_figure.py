"""binlab.explorers.figure: the chapters' FigureWidget that follows its cell's width (the browser check of the
width itself is in tests/test_ui.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import plotly.graph_objects as go
import pytest

from binlab.explorers import figure
from binlab.explorers.figure import Figure

EXPLORERS = Path(figure.__file__).parent


def test_figure_is_a_responsive_figure_widget():
    fig = Figure(go.Scatter(y=[1, 2]))
    assert isinstance(fig, go.FigureWidget)
    assert fig._config["responsive"] is True
    assert fig.layout.width is None          # no fixed width: plotly.js takes the container's
    assert fig.data[0].y == (1, 2)


def test_the_installed_plotly_module_is_wrapped_once():
    module = figure.fitting_module()
    plain = str(go.FigureWidget._esm)
    assert figure._EXPORT.search(plain), "plotly's widget module no longer ends with the export Figure wraps"
    assert not figure._EXPORT.search(module)                         # replaced, not appended
    assert module.count("export default () =>") == 1                 # ours, wrapping plotly's default
    assert "binlabFitWidth(ctx.el)" in module and "ResizeObserver" in module
    assert module.startswith(plain[:10_000])                         # plotly's code itself is untouched


def test_a_module_without_the_export_is_refused():
    with pytest.raises(RuntimeError, match="found 0"):
        figure.fitting_module("const a = 1;\nexport { a as default };\n")
    one = "const A=1,B=2,C=()=>({});\nexport{A as FigureModel,B as FigureView,C as default};\n"
    out = figure.fitting_module(one)
    assert "const binlabPlotlyWidget = C;" in out and "export { A as FigureModel, B as FigureView };" in out
    with pytest.raises(RuntimeError, match="found 2"):
        figure.fitting_module(one + one)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_wrapper_is_valid_javascript(tmp_path):
    stub = "const A=1,B=2,C=()=>({initialize(){},render(){return ()=>{}}});\n" \
           "export{A as FigureModel,B as FigureView,C as default};\n"
    path = tmp_path / "wrapped.mjs"
    path.write_text(figure.fitting_module(stub))
    result = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_explorer_figure_is_a_figure():
    """A plain go.Figure / go.FigureWidget in an explorer would be drawn at plotly's fixed 700 px again."""
    found = [f"{p.name}:{i}" for p in sorted(EXPLORERS.glob("*.py")) if p.name != "figure.py"
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\bgo\.(Figure|FigureWidget)\(", line)]
    assert not found, f"build figures with binlab.explorers.figure.Figure, not plotly's directly: {found}"
