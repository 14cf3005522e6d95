"""The book in a real browser: JupyterLab + headless Chromium, driven by Playwright (``make test-ui``).

For each notebook in :data:`NOTEBOOKS` (chapter 1 first), on a throwaway JupyterLab server
(see ``tests/ui_helpers.py``: temporary config/data/runtime/settings/workspace folders, a copy of
``book/``, autosave off, ``BINLAB_FAST=1`` in the kernel):

1. open the notebook, wait for its kernel to be idle;
2. Run > Run All Cells, wait until every code cell has an execution count and the kernel is idle
   again, with no traceback in any output;
3. check that at least one plotly figure (``.js-plotly-plot``) and one ipywidgets control are drawn
   and that the page shows no "Error displaying widget";
4. move or click the first slider / toggle / checkbox (preferring one whose cell output also holds
   a figure) and check that a figure's data or SVG changed;
5. save a screenshot to ``build/ui-<notebook>.png`` with the moved control's figure in view;
6. scroll every figure into view in turn, check that it fills its cell's width (the book's figures are
   :class:`binlab.explorers.figure.Figure`s, which follow the cell width; one that sets a width keeps
   it) and save it as ``build/ui-<notebook>-fig<NN>.png``.

For exercises 1 and 4 (:data:`EXERCISES`), both sides of the grader, as a learner meets them: Run All on the
untouched notebook (every check says "not attempted", no traceback); then, in one question's answer cell,
a typical wrong answer (one of the grader's ``MISTAKES``) typed into the editor and run with its check
cell (the check must give fewer points and the mistake's diagnosis), then the reference solution (full
marks); screenshots ``build/ui-<exercise>-wrong.png`` and ``-right.png``.

Excluded from ``make test`` (marker ``ui``); run with ``make test-ui``. Set ``BINLAB_UI_NOTEBOOKS``
(paths separated by ``os.pathsep``) to drive other notebooks, ``BINLAB_UI_TIMEOUT`` (seconds, default
600) to change how long "Run All" may take.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from pathlib import Path

import pytest
from ui_helpers import BUILD, ROOT, LabServer, launch_chromium, tail

pytestmark = pytest.mark.ui

# Notebooks to drive, in order; later chapters are added here.
NOTEBOOKS = [
    "book/01_bits_and_popcount.ipynb",
    "book/02_quantizers_and_ste.ipynb",
    "book/03_loss_landscapes.ipynb",
    "book/04_ternary_weight_splitting.ipynb",
    "book/05_elastic_activations.ipynb",
    "book/06_bi_attention_entropy.ipynb",
    "book/08_w1a1_bert_on_glue.ipynb",
]
if os.environ.get("BINLAB_UI_NOTEBOOKS"):
    NOTEBOOKS = [p for p in os.environ["BINLAB_UI_NOTEBOOKS"].split(os.pathsep) if p]

# Exercises driven on both sides: (notebook, grader module, question, name of the wrong answer in its MISTAKES).
EXERCISES = [
    ("exercises/01_popcount.ipynb", "binlab.grader.ex01_popcount", "q1", "msb_first"),
    ("exercises/04_splitting.ipynb", "binlab.grader.ex04_splitting", "q1", "i_greater_equal"),
]
if os.environ.get("BINLAB_UI_NOTEBOOKS"):
    EXERCISES = [e for e in EXERCISES if e[0] in NOTEBOOKS]

RUN_TIMEOUT = float(os.environ.get("BINLAB_UI_TIMEOUT", "600"))  # Run All, s
KERNEL_TIMEOUT = 180.0     # first kernel start on busy cores, s
WIDGET_TIMEOUT = 90.0      # widgets/figures drawn after the run, s
CHANGE_TIMEOUT = 90.0      # figure updated after the control moved, s (a callback may compile)

# Controls we know how to move, in the order ipywidgets draws them.
CONTROLS = ", ".join([
    ".widget-slider",                         # IntSlider, FloatSlider, ... (noUiSlider)
    ".widget-toggle-button",                  # ToggleButton
    ".widget-checkbox",                       # Checkbox
    ".widget-toggle-buttons",                 # ToggleButtons
    ".widget-dropdown",                       # Dropdown
    ".widget-radio",                          # RadioButtons
])


def _path(nb: str) -> Path:
    p = Path(nb)
    return p if p.is_absolute() else ROOT / p


def _code_cells(path: Path) -> int:
    """Number of code cells with source (empty cells get no execution count)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return sum(1 for c in nb.cells if c.cell_type == "code" and c.source.strip())


# ------------------------------------------------------------------------------------------
# Fixtures: one server and one browser for the whole module, started only when a test needs them.

@pytest.fixture(scope="module")
def lab():
    existing = [_path(nb) for nb in NOTEBOOKS + [e[0] for e in EXERCISES] if _path(nb).is_file()]
    with LabServer(existing, start_timeout=KERNEL_TIMEOUT) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="binlab-ui-chromium-") as profile, \
            sync_playwright() as pw:
        context = launch_chromium(pw, Path(profile))
        try:
            yield context
        finally:
            context.close()


# ------------------------------------------------------------------------------------------
# Page inspection (JavaScript run in the page).

STATE_JS = """() => {
  const q = (s) => [...document.querySelectorAll(s)];
  const status = document.querySelector('.jp-StatusBar-Left');
  return {
    prompts: q('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt').map(e => e.textContent.trim()),
    status: status ? status.innerText.replace(/\\s+/g, ' ') : '',
    tracebacks: q('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
      .map(e => e.innerText)
      .filter(t => /Traceback \\(most recent call last\\)|^\\w*(Error|Exception): /m.test(t)),
    dialogs: q('.jp-Dialog').map(e => e.innerText.replace(/\\s+/g, ' ')),
  };
}"""

# Every plotly figure's traces + layout title and its SVG; compared before/after the control moved.
PLOTS_JS = """() => [...document.querySelectorAll('.jp-OutputArea .js-plotly-plot')].map(el => {
  let data = '';
  try { data = JSON.stringify([el.data, el.layout && el.layout.title]); } catch (e) { data = String(e); }
  const svg = [...el.querySelectorAll('svg.main-svg')].map(s => s.innerHTML).join('');
  return data + '\\n' + svg;
})"""

RENDERED_JS = """() => ({
  plots: document.querySelectorAll('.jp-OutputArea .js-plotly-plot .main-svg').length,
  controls: document.querySelectorAll('.jp-OutputArea :is(%s)').length,
})""" % CONTROLS

WIDGET_ERRORS_JS = """() => {
  const found = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const t = walker.currentNode.textContent;
    if (t.includes('Error displaying widget')) found.push(t.trim().slice(0, 500));
  }
  for (const icon of document.querySelectorAll('.jupyter-widgets-error-widget')) {
    const box = icon.closest('.jupyter-widgets') || icon.parentElement;
    const pre = box.querySelector('pre');
    if (pre && /Click to show/.test(pre.innerText)) box.click();
    found.push('widget error: ' + (box.innerText || '').trim().slice(0, 1500));
  }
  return found;
}"""

PAGE_TEXT_JS = "() => document.body.innerText"

# Each figure's drawn width against the width its output area offers, and its title (for messages).
FIGURE_SIZES_JS = """() => [...document.querySelectorAll('.jp-OutputArea .js-plotly-plot')].map(el => {
  const area = el.closest('.jp-OutputArea-output') || el.parentElement;
  const paper = el.querySelector('svg.main-svg');
  const title = el.layout && el.layout.title;
  return {
    drawn: paper ? paper.getBoundingClientRect().width : 0,
    available: area.getBoundingClientRect().width,
    fixed: !!(el.layout && el.layout.width),
    traces: (el.data || []).length,
    held: el.binlabHeld ? el.binlabHeld() : -1,   // traces the widget's model holds (binlab's Figure only)
    redrawn: el.binlabRedrawn || 0,
    title: String((title && (title.text || title)) || '(untitled)').slice(0, 80),
  };
})"""
MIN_FILL = 0.9             # a figure without a layout width must fill this share of its output area


def kernel_state(page) -> str:
    """Kernel status as the status bar shows it ('Idle', 'Busy', 'Starting', 'Unknown', ...)."""
    text = page.evaluate(STATE_JS)["status"]
    m = re.search(r"\|\s*([A-Z][a-z]+(?: [a-z]+)?)", text)
    return m.group(1) if m else text


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = predicate()
        if ok:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last state: {last}")


def wait_kernel_idle(page, timeout: float) -> None:
    def idle():
        st = kernel_state(page)
        return st == "Idle", st
    wait_until(idle, timeout, "the kernel to be Idle")


def dismiss_dialogs(page) -> None:
    """Accept a kernel-selection dialog if one shows (it should not: the notebooks name python3)."""
    for dlg in page.locator(".jp-Dialog").all():
        text = dlg.inner_text()
        btn = dlg.locator(".jp-Dialog-footer .jp-mod-accept")
        if "Select Kernel" in text and btn.count():
            btn.first.click()


def run_all_cells(page) -> None:
    """Run > Run All Cells, through the menu bar as a reader would."""
    page.locator(".lm-MenuBar-item", has=page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$"))).click()
    item = page.locator(".lm-Menu-item", has=page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")))
    item.first.click()


def wait_run_finished(page, n_code: int, timeout: float) -> dict:
    """Until no cell is queued/running, the kernel is idle (stable for 2 s) -- or a traceback shows."""
    stable_since = None

    def done():
        nonlocal stable_since
        st = page.evaluate(STATE_JS)
        if st["tracebacks"]:
            return True, st
        numbered = sum(1 for p in st["prompts"] if re.fullmatch(r"\[\d+\]:", p))
        quiet = not any("*" in p for p in st["prompts"]) and kernel_state(page) == "Idle"
        if quiet and numbered >= 1:
            stable_since = stable_since or time.monotonic()
            if numbered >= n_code or time.monotonic() - stable_since > 2.0:
                return True, st
        else:
            stable_since = None
        return False, {k: st[k] for k in ("prompts", "status")}

    return wait_until(done, timeout, "Run All Cells to finish")


def widget_errors(page) -> list[str]:
    """Widgets that failed: "Error displaying widget..." text, or ipywidgets' error widget (a broken
    icon, "Click to show javascript error."; clicked here so its message shows, also in the
    failure screenshot)."""
    return page.evaluate(WIDGET_ERRORS_JS)


def rendered(page):
    """(done, state) for wait_until: figures and controls drawn, nothing loading; fails fast on a
    widget error."""
    text = page.evaluate(PAGE_TEXT_JS)
    errors = widget_errors(page)
    assert not errors, "widgets failed to render: " + "; ".join(errors)[:2000]
    counts = page.evaluate(RENDERED_JS)
    done = counts["plots"] > 0 and counts["controls"] > 0 and "Loading widget" not in text
    return done, counts


def wait_plots_stable(page, timeout: float = 30.0) -> list:
    """The figures' snapshot once two readings 1 s apart agree (no transition still running)."""
    last = page.evaluate(PLOTS_JS)

    def stable():
        nonlocal last
        time.sleep(1.0)
        now = page.evaluate(PLOTS_JS)
        ok, last = now == last, now
        return ok, now

    return wait_until(stable, timeout, "the figures to stop changing", interval=0)


def first_control(page):
    """First control in an output that also holds a figure, else the first control anywhere."""
    outputs = page.locator(".jp-Notebook .jp-Cell-outputArea")
    for i in range(outputs.count()):
        out = outputs.nth(i)
        if out.locator(".js-plotly-plot").count() and out.locator(CONTROLS).count():
            return out.locator(CONTROLS).first
    controls = page.locator(f".jp-Notebook .jp-Cell-outputArea :is({CONTROLS})")
    return controls.first if controls.count() else None


def operate(page, control) -> str:
    """Move/click ``control`` once; returns what was done (for messages)."""
    control.scroll_into_view_if_needed()
    classes = control.get_attribute("class") or ""
    if "widget-slider" in classes:
        handle = control.locator(".noUi-handle").first
        readout = control.locator(".widget-readout").first
        before = readout.inner_text() if readout.count() else None
        handle.focus()
        page.keyboard.press("ArrowRight")
        if readout.count() and readout.inner_text() == before:  # at its maximum: go the other way
            page.keyboard.press("ArrowLeft")
            page.keyboard.press("ArrowLeft")
        after = readout.inner_text() if readout.count() else None
        return f"slider moved with the keyboard: {before!r} -> {after!r}"
    if "widget-toggle-button" in classes and "widget-toggle-buttons" not in classes:
        control.click()
        return "toggle button clicked"
    if "widget-checkbox" in classes:
        control.locator("input[type=checkbox]").first.click()
        return "checkbox clicked"
    if "widget-toggle-buttons" in classes:
        buttons = control.locator("button:not(.mod-active)")
        buttons.first.click()
        return "toggle-buttons option clicked"
    if "widget-dropdown" in classes:
        select = control.locator("select").first
        options = select.locator("option").all_inner_texts()
        current = select.evaluate("s => s.options[s.selectedIndex] ? s.options[s.selectedIndex].text : null")
        other = next(o for o in options if o != current)
        select.select_option(label=other)
        return f"dropdown set to {other!r}"
    if "widget-radio" in classes:
        control.locator("input[type=radio]:not(:checked)").first.click()
        return "radio option clicked"
    raise AssertionError(f"don't know how to operate a control with classes {classes!r}")


def screenshot_figures(page, name: str) -> int:
    """Scroll each figure into view, check its width, save ``build/ui-<name>-figNN.png``; returns how many."""
    for old in BUILD.glob(f"ui-{name}-fig*.png"):
        old.unlink()
    plots = page.locator(".jp-OutputArea .js-plotly-plot")
    narrow, empty = [], []
    for i in range(plots.count()):
        plot = plots.nth(i)
        plot.evaluate("e => e.scrollIntoView({block: 'center'})")
        svg = lambda: plot.evaluate("e => [...e.querySelectorAll('svg.main-svg')].map(s => s.innerHTML).join('')")
        last = svg()

        def drawn():  # the same drawing twice, 300 ms apart: no redraw under way
            nonlocal last
            page.wait_for_timeout(300)
            now = svg()
            ok, last = now == last, now
            return ok, len(now)

        wait_until(drawn, 30, f"figure {i} to finish drawing", interval=0)
        size = page.evaluate(FIGURE_SIZES_JS)[i]
        if not size["fixed"] and size["drawn"] < MIN_FILL * size["available"]:
            narrow.append(f"figure {i} ({size['title']!r}): {size['drawn']:.0f} of {size['available']:.0f} px")
        if not size["traces"] or size["title"] == "(untitled)":
            empty.append(f"figure {i} ({size['title']!r}): {size['traces']} traces drawn, its model holds "
                         f"{size['held']}, redrawn {size['redrawn']} times")
        box = plot.bounding_box()
        page.screenshot(path=str(BUILD / f"ui-{name}-fig{i:02d}.png"), clip=box)
    assert not narrow, "figures narrower than their cell: " + "; ".join(narrow)
    assert not empty, "figures drawn without data or title: " + "; ".join(empty)
    return plots.count()


def new_page(context):
    """A page with a 60 s default timeout and the browser console collected (for :func:`diagnostics`)."""
    page = context.new_page()
    page.set_default_timeout(60_000)
    console: list[str] = []
    page.on("console", lambda m: console.append(f"[{m.type}] {m.text}"))
    page.on("pageerror", lambda e: console.append(f"[pageerror] {e}"))
    return page, console


def open_notebook(page, lab, path: Path) -> None:
    """Open the server's copy of ``path`` and wait for its kernel to be idle."""
    page.goto(lab.url_for(path), wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=KERNEL_TIMEOUT * 1000)
    dismiss_dialogs(page)
    wait_kernel_idle(page, KERNEL_TIMEOUT)


@contextlib.contextmanager
def diagnostics(page, lab, name: str, console: list):
    """On failure: screenshot build/ui-<name>-failure.png and put page text, console, log in the message."""
    try:
        yield
    except Exception as e:
        what = str(e) if isinstance(e, AssertionError) else f"{type(e).__name__}: {e}"
        shot = BUILD / f"ui-{name}-failure.png"
        with contextlib.suppress(Exception):
            page.screenshot(path=str(shot))
        with contextlib.suppress(Exception):
            text = page.evaluate(PAGE_TEXT_JS)
        if "text" not in locals():
            text = "(page text unavailable)"
        raise AssertionError(
            f"{what}\n\n--- screenshot: {shot}\n"
            f"--- page text (tail) ---\n{tail(text, 5000)}\n"
            f"--- browser console (tail) ---\n{tail(chr(10).join(console), 4000)}\n"
            f"--- JupyterLab log (tail) ---\n{lab.log(4000)}"
        ) from e


# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[Path(nb).stem for nb in NOTEBOOKS])
def test_notebook_in_browser(notebook, request):
    path = _path(notebook)
    if not path.is_file():
        pytest.skip(f"{notebook} does not exist yet (nothing to open in the browser)")
    lab = request.getfixturevalue("lab")
    context = request.getfixturevalue("browser")
    name = path.stem
    BUILD.mkdir(exist_ok=True)
    n_code = _code_cells(lab.copy_of(path))
    original = path.read_bytes()

    page, console = new_page(context)
    t0 = time.monotonic()
    try:
        with diagnostics(page, lab, name, console):
            open_notebook(page, lab, path)

            run_all_cells(page)
            st = wait_run_finished(page, n_code, RUN_TIMEOUT)
            assert not st["tracebacks"], "a cell raised:\n" + "\n\n".join(st["tracebacks"])[-4000:]
            numbered = [p for p in st["prompts"] if re.fullmatch(r"\[\d+\]:", p)]
            assert len(numbered) >= n_code, (
                f"only {len(numbered)} of {n_code} code cells ran; prompts: {st['prompts']}")
            t_run = time.monotonic() - t0

            # Figures and widgets drawn, no widget errors.
            wait_until(lambda: rendered(page), WIDGET_TIMEOUT,
                       "a plotly figure and a control to be drawn and every widget loaded")

            # Move the first control; a figure must change.
            control = first_control(page)
            assert control is not None, "no slider/toggle/checkbox in the outputs"
            before = wait_plots_stable(page)
            done = operate(page, control)

            def changed():
                now = page.evaluate(PLOTS_JS)
                diff = [i for i, (a, b) in enumerate(zip(before, now)) if a != b]
                return bool(diff) or len(now) != len(before), diff or f"{len(now)} figures, none changed"

            diff = wait_until(changed, CHANGE_TIMEOUT, f"a figure to change after: {done}")
            wait_kernel_idle(page, CHANGE_TIMEOUT)
            errors = widget_errors(page)
            assert not errors, "widgets failed to render after the change: " + "; ".join(errors)[:2000]
            st = page.evaluate(STATE_JS)
            assert not st["tracebacks"], "a traceback appeared:\n" + "\n\n".join(st["tracebacks"])[-4000:]

            # Screenshot with the control and its figure in view.
            page.mouse.move(0, 0)
            plot = page.locator(".jp-OutputArea .js-plotly-plot").nth(diff[0] if isinstance(diff, list) else 0)
            plot.evaluate("e => e.scrollIntoView({block: 'center'})")
            page.wait_for_timeout(500)
            page.screenshot(path=str(BUILD / f"ui-{name}.png"))

            # Every figure in view, one screenshot each; each fills its cell's width.
            n_figures = screenshot_figures(page, name)
            print(f"{notebook}: ran {n_code} code cells in {t_run:.0f} s; {done}; "
                  f"screenshots {BUILD / f'ui-{name}.png'} + {n_figures} figures; total {time.monotonic() - t0:.0f} s")
    finally:
        with contextlib.suppress(Exception):
            page.close()
        lab.shutdown_kernels()
    # The browser worked on a copy with autosave off: the notebook in the checkout is untouched.
    assert path.read_bytes() == original, f"{notebook} was modified while the browser ran it"


# ------------------------------------------------------------------------------------------
# Exercises: a wrong answer, then the right one, typed into the answer cell.

def answer_source(module, question: str, mistake: str | None) -> str:
    """The code a learner would type for ``question``: a known wrong answer (``mistake``) or the reference,
    as a function with the question's name."""
    import importlib
    import inspect
    import textwrap

    grader = importlib.import_module(module)
    q = getattr(grader, question)
    if mistake is None:
        return q.solution_source()
    impl = next(m.impl for m in grader.MISTAKES if m.question == question and m.name == mistake)
    source = textwrap.dedent(inspect.getsource(impl))
    return re.sub(r"^def \w+\(", f"def {q.func_name}(", source, count=1)


def cell_with(page, text: str):
    """The code cell whose input contains ``text``."""
    return page.locator(".jp-Notebook .jp-CodeCell").filter(
        has=page.locator(".jp-InputArea .cm-content", has_text=text)).first


def type_answer_and_check(page, answer_cell, check_cell, source: str) -> str:
    """Replace the answer cell's code by ``source`` as a learner would (click, select all, type), run it and its
    check cell with Shift+Enter; returns the check's output once it changed."""
    before = check_cell.locator(".jp-OutputArea").inner_text()
    editor = answer_cell.locator(".cm-content").first
    editor.scroll_into_view_if_needed()
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(source)  # no auto-indent: the text lands as written
    page.keyboard.press("Shift+Enter")
    page.keyboard.press("Shift+Enter")

    def changed():
        now = check_cell.locator(".jp-OutputArea").inner_text()
        prompt = check_cell.locator(".jp-InputArea-prompt").inner_text()
        return (now.strip() and now != before and "*" not in prompt and kernel_state(page) == "Idle"), now

    return wait_until(changed, CHANGE_TIMEOUT, "the check cell's feedback to change")


@pytest.mark.parametrize("notebook, module, question, mistake", EXERCISES,
                         ids=[Path(e[0]).stem for e in EXERCISES])
def test_exercise_in_browser(notebook, module, question, mistake, request):
    path = _path(notebook)
    lab = request.getfixturevalue("lab")
    context = request.getfixturevalue("browser")
    name = path.stem
    BUILD.mkdir(exist_ok=True)
    n_code = _code_cells(lab.copy_of(path))
    original = path.read_bytes()
    import importlib

    q = getattr(importlib.import_module(module), question)
    diagnosis = next(m.diagnosis for m in importlib.import_module(module).MISTAKES
                     if m.question == question and m.name == mistake)

    page, console = new_page(context)
    try:
        with diagnostics(page, lab, name, console):
            open_notebook(page, lab, path)

            # The untouched notebook: every check runs and says "not attempted".
            run_all_cells(page)
            st = wait_run_finished(page, n_code, RUN_TIMEOUT)
            assert not st["tracebacks"], "a cell of the untouched exercise raised:\n" + "\n".join(st["tracebacks"])
            answer = cell_with(page, f"def {q.func_name}(")
            check = cell_with(page, f"{question}.check({q.func_name})")
            stub_feedback = check.locator(".jp-OutputArea").inner_text()
            assert "not attempted" in stub_feedback and f"0/{q.max_points}" in stub_feedback, stub_feedback

            # A typical wrong answer: fewer points, and the grader says what is wrong.
            wrong = type_answer_and_check(page, answer, check, answer_source(module, question, mistake))
            assert "correct!" not in wrong and f"/{q.max_points} points" in wrong, wrong
            assert diagnosis.lower() in wrong.lower(), f"the diagnosis {diagnosis!r} is missing from:\n{wrong}"
            check.scroll_into_view_if_needed()
            page.screenshot(path=str(BUILD / f"ui-{name}-wrong.png"))

            # The reference solution: full marks.
            right = type_answer_and_check(page, answer, check, answer_source(module, question, None))
            assert f"correct! {q.max_points}/{q.max_points} points" in right, right
            check.scroll_into_view_if_needed()
            page.screenshot(path=str(BUILD / f"ui-{name}-right.png"))
            st = page.evaluate(STATE_JS)
            assert not st["tracebacks"], "a traceback appeared:\n" + "\n\n".join(st["tracebacks"])[-4000:]
            print(f"{notebook}: stub 0/{q.max_points}; {mistake}: {wrong.splitlines()[0]!r}; reference: full marks")
    finally:
        with contextlib.suppress(Exception):
            page.close()
        lab.shutdown_kernels()
    assert path.read_bytes() == original, f"{notebook} was modified while the browser ran it"
