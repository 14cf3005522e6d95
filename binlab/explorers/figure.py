"""``Figure``: the book's plotly ``FigureWidget``, sized to the width of the cell it is drawn in.

plotly's ``FigureWidget`` (an anywidget since plotly 6) draws itself before JupyterLab attaches it to the page,
when it has no width yet, so it falls back to plotly.js's default of 700 px and stays there: cramped two-panel
figures in a 1200 px column, and nothing follows when the reader resizes the window or closes the side bar.
``Figure`` is the same widget with two changes:

* plotly.js's ``responsive`` config is on, so a figure whose layout sets no ``width`` takes its container's width
  whenever plotly.js is asked to resize it;
* its front-end module is plotly's own, wrapped (:data:`FIT_JS`): each view watches its element with a
  ``ResizeObserver`` and asks plotly.js to resize when the element's width changes (the first time when
  JupyterLab attaches it, later when the cell's width changes).

* on a busy machine a view was seen drawn without the traces its model holds (an empty plot with plotly's default
  axes, nondeterministically); the wrapper checks for that during the first 10 s and draws the view again from the
  model.

A figure that sets ``layout.width`` keeps it. Everything else (``fig.data``, ``batch_update``, the callbacks the
explorers use) is ``FigureWidget``'s. The wrapping needs the module's last line to export plotly's three names
(``FigureModel``, ``FigureView``, ``default``); :func:`fitting_module` raises if a plotly release changes that,
and ``tests/test_viz.py`` checks it on the installed plotly.
"""

from __future__ import annotations

import re

import plotly.graph_objects as go

__all__ = ["Figure", "FIT_JS", "fitting_module"]

#: The export statement that ends plotly's widget module (names are minified; the three exported ones are not).
_EXPORT = re.compile(r"export\s*\{\s*(\w+) as FigureModel\s*,\s*(\w+) as FigureView\s*,\s*(\w+) as default\s*\}\s*;")

#: Appended to plotly's module in place of its export: the same exports, with ``render`` also fitting the width.
FIT_JS = r"""
const binlabPlotlyWidget = %(default)s;
function binlabFitWidth(el) {
  // Resize plotly's figure in ``el`` when ``el``'s width changes (0 -> the cell's width when attached).
  let width = 0, pending = null;
  const observer = new ResizeObserver((entries) => {
    const now = Math.round(entries[entries.length - 1].contentRect.width);
    if (now === 0 || Math.abs(now - width) < 2) return;
    width = now;
    clearTimeout(pending);
    pending = setTimeout(() => { if (el._responsiveChartHandler) el._responsiveChartHandler(); }, 50);
  });
  observer.observe(el);
  return () => { clearTimeout(pending); observer.disconnect(); };
}
export { %(model)s as FigureModel, %(view)s as FigureView };
export default () => {
  const widget = binlabPlotlyWidget();
  return {
    initialize(ctx) { return widget.initialize(ctx); },
    render(ctx) {
      let cleanup = widget.render(ctx);
      const unfit = binlabFitWidth(ctx.el);
      // Drawn without the traces the model holds (seen on busy machines): draw again from the model, a few times.
      ctx.el.binlabHeld = () => (ctx.model.get("_widget_data") || []).length;  // for tests/test_ui.py's messages
      let checks = 0;
      const heal = setInterval(() => {
        const drawn = (ctx.el.data || []).length, held = (ctx.model.get("_widget_data") || []).length;
        if (drawn === 0 && held > 0) {
          if (typeof cleanup === "function") cleanup();
          cleanup = widget.render(ctx);
          ctx.el.binlabRedrawn = (ctx.el.binlabRedrawn || 0) + 1;
        }
        if (++checks >= 20) clearInterval(heal);
      }, 500);
      return () => { clearInterval(heal); unfit(); if (typeof cleanup === "function") cleanup(); };
    },
  };
};
"""


def fitting_module(module: str | None = None) -> str:
    """plotly's widget module (the text of ``plotly/package_data/widgetbundle.js``, or ``module``) with its export
    replaced by :data:`FIT_JS`."""
    text = str(go.FigureWidget._esm) if module is None else module  # FileContents: str() is the file's text
    matches = list(_EXPORT.finditer(text))
    if len(matches) != 1:
        raise RuntimeError("expected one 'export {.. as FigureModel, .. as FigureView, .. as default}' statement in "
                           f"plotly's widget module, found {len(matches)}: this plotly release changed its module, "
                           "so binlab.explorers.figure cannot fit figures to the cell width")
    m = matches[0]
    names = dict(model=m.group(1), view=m.group(2), default=m.group(3))
    return text[:m.start()] + FIT_JS % names + text[m.end():]


class Figure(go.FigureWidget):
    """A ``go.FigureWidget`` that fills the width of its cell and follows it (see the module docstring)."""

    _esm = fitting_module()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._config = {**self._config, "responsive": True}
