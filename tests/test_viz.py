"""binlab.explorers.viz (shared helpers) and binlab.explorers.bits (chapter 1's figures and the XNOR explorer),
driven from Python: set a control's value, read the figure's data. No browser needed."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_titled
from hypothesis import given, settings, strategies as st

from binlab.analysis import costs
from binlab.explorers import bits, viz
from binlab.kernels import bench, packing, products
from binlab.model import BertConfig

# ----------------------------------------------------------------------------------------------
# viz: show_source and markdown helpers


def test_show_source_is_the_library_code():
    code = viz.show_source(products.xnor_dot_reference)
    assert "def xnor_dot_reference" in code.data
    assert "k - 2 * differ" in code.data
    assert "def words_for" in viz.source_of(packing.words_for)
    with pytest.raises(TypeError):
        viz.source_of(len)


DOC = """# Title

intro

## Results

| shape | time (µs) | ratio |
|---|---:|---:|
| a | 1,013.5 | 11.4× |
| b | – | 2x |

```
## not a heading (in a code block)
```

### sub

still in Results

## Next

other
"""


def test_markdown_section_and_table():
    body = viz.markdown_section(DOC, "results")
    assert body.startswith("| shape")
    assert "still in Results" in body and "not a heading" in body and "other" not in body
    rows = viz.parse_markdown_table(body)
    assert rows == [{"shape": "a", "time (µs)": "1,013.5", "ratio": "11.4×"},
                    {"shape": "b", "time (µs)": "–", "ratio": "2x"}]
    assert [viz.parse_number(r["time (µs)"]) for r in rows] == [1013.5, None]
    assert [viz.parse_number(r["ratio"]) for r in rows] == [11.4, 2.0]
    with pytest.raises(KeyError, match="Results"):
        viz.markdown_section(DOC, "Missing")
    with pytest.raises(ValueError):
        viz.parse_markdown_table("no table here")
    with pytest.raises(ValueError):
        viz.parse_number("fast")


def test_markdown_section_reads_a_file(tmp_path):
    path = tmp_path / "doc.md"
    path.write_text(DOC, encoding="utf-8")
    assert viz.markdown_section(path, "Next") == "other"
    assert viz.markdown_section(str(path), "Next") == "other"


def test_markdown_table():
    text = viz.markdown_table([{"name": "fp", "MiB": 417.64}, {"name": "1 bit", "MiB": 14.96}],
                              {"name": "config", "MiB": "size (MiB)"}, formats={"MiB": ".1f"})
    assert text.splitlines() == ["| config | size (MiB) |", "|---|---:|",
                                 "| fp | 417.6 |", "| 1 bit | 15.0 |"]
    assert viz.parse_markdown_table(text)[0] == {"config": "fp", "size (MiB)": "417.6"}
    with pytest.raises(ValueError):
        viz.markdown_table([])


# ----------------------------------------------------------------------------------------------
# the XNOR explorer


def _signs(toggles):
    return np.array([1.0 if t.value else -1.0 for t in toggles])


def _shown_dot(fig, controls) -> int:
    """The dot product as the figure's title and the text line show it (the number after the last '=')."""
    title = fig.layout.title.text
    readout = controls["readout"].value
    from_title = int(title.rsplit("=", 1)[1].replace("\u2212", "-"))
    from_text = int(re.search(r"= (-?\d+)</b>", readout.replace("\u2212", "-")).group(1))
    assert from_title == from_text
    return from_title


def test_xnor_explorer_updates_on_toggle():
    ui, fig, controls = bits.make_xnor_explorer(n_bits=12, seed=3)
    a_t, b_t = controls["a"], controls["b"]
    assert len(a_t) == len(b_t) == 12
    assert len(fig.data) == 4
    assert _shown_dot(fig, controls) == int(np.dot(_signs(a_t), _signs(b_t)))

    before = [list(row) for row in fig.data[0].z], list(fig.data[3].y), fig.layout.title.text
    a_t[0].value = not a_t[0].value  # flip the sign of a[0]
    after = [list(row) for row in fig.data[0].z], list(fig.data[3].y), fig.layout.title.text
    assert before != after
    a, b = _signs(a_t), _signs(b_t)
    assert fig.data[0].z[0][0] == a[0]
    assert _shown_dot(fig, controls) == int(np.sum(a * b))
    assert a_t[0].description == ("+1" if a[0] > 0 else "\u22121")

    # Flip every bit of b: the dot product changes sign, XOR becomes XNOR.
    xor_before = list(fig.data[1].z[0])
    for t in b_t:
        t.value = not t.value
    assert list(fig.data[1].z[0]) == [1 - v for v in xor_before]
    assert _shown_dot(fig, controls) == -int(np.sum(a * b))
    agree, differ, dot = fig.data[3].y
    assert agree + differ == 12 and agree - differ == dot
    assert list(fig.data[2].z[0]) == list(_signs(a_t) * _signs(b_t))


def test_xnor_explorer_with_given_vectors():
    a = [1, -1, 1, 1, -1, -1, 1, -1]
    b = [1, 1, -1, 1, -1, 1, 1, 1]
    ui, fig, controls = bits.make_xnor_explorer(a=a, b=b)
    assert [t.value for t in controls["a"]] == [v > 0 for v in a]
    assert _shown_dot(fig, controls) == int(np.dot(a, b))
    assert list(fig.data[1].z[0]) == [int(x != y) for x, y in zip(a, b)]
    assert "words: a = 0x" in controls["readout"].value
    assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert fig.layout.xaxis2.title.text and fig.layout.yaxis2.title.text


@pytest.mark.parametrize("kwargs", [dict(n_bits=0), dict(n_bits=65), dict(n_bits=True),
                                    dict(a=[1, 0, 1], b=[1, 1, 1]), dict(a=[1, 1], b=[1, 1, 1]),
                                    dict(a=[1.0] * 65, b=[1.0] * 65)])
def test_xnor_explorer_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        bits.make_xnor_explorer(**kwargs)


@settings(deadline=None, max_examples=40)
@given(st.lists(st.tuples(st.sampled_from([-1.0, 1.0]), st.sampled_from([-1.0, 1.0])),
                min_size=1, max_size=200))
def test_xnor_state_dot_products_agree(pairs):
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    s = bits.xnor_state(a, b)
    assert s["dot"] == s["dot_float"] == s["dot_kernel"] == int(np.sum(a * b))
    assert s["popcount"] == int(np.sum(a != b))
    assert list(s["xor_bits"]) == list((a != b).astype(int))
    assert list(s["a_bits"]) == list((a > 0).astype(int))
    assert s["dot"] == products.xnor_dot_reference(s["a_words"], s["b_words"], len(a))
    assert s["agree"] + s["popcount"] == len(a)


# ----------------------------------------------------------------------------------------------
# packing


def test_word_bits_and_rows_for_k_70():
    x = torch.randn(70, generator=torch.Generator().manual_seed(1))
    words = packing.pack_signs(x)
    wb = bits.word_bits(words, 70)
    assert wb.shape == (2, 64)
    assert (wb[1, 6:] == -1).all() and (wb[1, :6] >= 0).all() and (wb[0] >= 0).all()
    assert list(wb.reshape(-1)[:70]) == list((x >= 0).int().tolist())
    rows = bits.word_rows(words, 70)
    assert [r["padding bits"] for r in rows] == [0, 58]
    assert [r["elements"] for r in rows] == ["0..63", "64..69"]
    assert sum(r["1-bits"] for r in rows) == int((x >= 0).sum())
    assert int(rows[1]["hex"], 16) == int(words[1])
    assert torch.equal(packing.unpack_signs(words, 70), torch.where(x >= 0, 1.0, -1.0))


def test_packing_figure():
    x = torch.tensor([0.5, -1.0, 0.0, -2.0] * 17 + [3.0, -3.0])  # K = 70
    fig = bits.packing_figure(x)
    z = np.array(fig.data[0].z)
    assert z.shape == (2, 64)
    assert list(z[0, :4]) == [1, 0, 1, 0]
    assert list(z[1, :6]) == [1, 0, 1, 0, 1, 0] and (z[1, 6:] == 2).all()  # grey padding
    assert "K = 70" in fig.layout.title.text and "2 uint64 words" in fig.layout.title.text
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    with pytest.raises(ValueError):
        bits.packing_figure(torch.zeros(2, 3))


# ----------------------------------------------------------------------------------------------
# costs and speed figures


def test_cost_figure_shows_binlab_costs():
    configs = [BertConfig(), BertConfig(quant="w1a1")]
    fig = bits.cost_figure(configs, seq_len=128)
    rows = bits.cost_rows(configs, 128)
    assert list(fig.data[0].y) == pytest.approx([r["MiB"] for r in rows])
    parts = np.array(fig.data[1].y) + np.array(fig.data[2].y)
    assert parts == pytest.approx([r["MiB"] for r in rows])
    assert fig.data[1].y[1] == pytest.approx(fig.data[1].y[0] / 32)  # 1 bit instead of 32
    assert list(fig.data[3].y) == pytest.approx([costs.bitop_flops(c, 128) / 1e9 for c in configs])
    assert rows[1]["fewer FLOPs"] == pytest.approx(64)
    assert rows[0]["smaller"] == 1.0
    assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis2.title.text


def test_recorded_speedups_parse_docs_benchmarks():
    rec = bits.recorded_speedups()
    label = bits.shape_label(128, 768, 768)
    assert label in rec
    linear = {k: v for k, v in rec.items() if k.startswith("linear")}
    assert len(linear) >= 6
    for row in linear.values():
        assert row["x_prepacked"] > 0 and row["fp32_us"] > 0
        assert row["fp32_us"] / row["prepacked_us"] == pytest.approx(row["x_prepacked"], rel=0.3)


def test_measure_speedups_and_figure():
    measured = bits.measure_speedups([(2, 64, 64)], rounds=3)
    (row,) = measured
    assert row["label"] == "linear M=2 K=64 N=64"
    assert row["x_prepacked"] > 0 and row["x_linear"] > 0 and row["fp32_us"] > 0
    recorded = {"linear M=2 K=64 N=64": {"x_prepacked": 3.0}}
    fig = bits.speedup_figure(measured, recorded)
    assert [t.name for t in fig.data] == ["here: xnor_gemm, prepacked",
                                          "here: BinaryLinear (packing counted)",
                                          "docs/benchmarks.md: prepacked"]
    assert list(fig.data[0].y) == [row["x_prepacked"]]
    assert list(fig.data[2].y) == [3.0]
    assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert len(bits.speedup_figure(measured).data) == 2
    assert row["attempts"] >= 1 and row["disturbed"] == ("" if row["quiet"] else bits.disturbance(row))


# The timing machinery replaced by fakes (the CPU this runs on is busy): bench.measure_shape's loop of
# attempts, its verdict and the chapter's table, summary and figure are what is tested, deterministically.

METHODS = ("torch_fp32", "binlab_prepacked", "binlab_linear")
QUIET = {"torch_fp32": 1.14e-3, "binlab_prepacked": 1e-4, "binlab_linear": 2e-4}  # 11.4x, 5.7x
BUSY = {"torch_fp32": 0.2083, "binlab_prepacked": 1e-4, "binlab_linear": 2e-4}  # 2083.0x: torch starved of cores


@pytest.fixture
def fake_bench(monkeypatch):
    """``fake(foreign, timings)``: the i-th attempt at timing a shape sees ``foreign[i]`` cores of other processes
    (bench.ForeignLoad) and the seconds per call ``timings[i]`` (bench.time_methods: a number per method, the
    same in every round, or a list of one per round). Returns the rounds asked of each attempt."""

    def fake(foreign, timings):
        loads, times, asked = iter(foreign), iter(timings), []

        class Load:
            def start(self):
                pass

            def stop(self):
                return next(loads)

        def time_methods(methods, rounds):
            asked.append(rounds)
            t = next(times)
            return {name: list(t[name]) if isinstance(t[name], list) else [t[name]] * rounds for name in methods}

        monkeypatch.setattr(bench, "ForeignLoad", Load)
        monkeypatch.setattr(bench, "time_methods", time_methods)
        monkeypatch.setattr(bench, "linear_methods", lambda m, k, n, int8: dict.fromkeys(METHODS, lambda: None))
        return asked

    return fake


def test_a_disturbed_shape_is_timed_again_until_it_is_quiet(fake_bench):
    asked = fake_bench([1.3, 0.02], [BUSY, QUIET])
    (row,) = bits.measure_speedups([(128, 768, 768)], rounds=5, retries=2)
    assert asked == [5, 5]  # the busy attempt, then a quiet one; no third
    assert row["quiet"] and row["attempts"] == 2 and row["disturbed"] == ""
    assert row["x_prepacked"] == pytest.approx(11.4) and row["foreign_cores"] == 0.02
    summary = bits.speedup_summary([row])
    assert "11.4×" in summary and "2083" not in summary and "Left out" not in summary


def test_a_shape_that_stays_disturbed_is_greyed_and_kept_out_of_the_summary(fake_bench):
    from md_tables import check_tables

    asked = fake_bench([0.0, 1.3, 1.6, 1.5], [QUIET, BUSY, BUSY, BUSY])
    quiet, busy = bits.measure_speedups([(128, 768, 768), (8, 768, 768)], rounds=3, retries=2)
    assert asked == [3] * 4  # one attempt for the quiet shape, 1 + 2 retries for the busy one
    assert quiet["quiet"] and not busy["quiet"] and busy["attempts"] == 3
    assert busy["x_prepacked"] == pytest.approx(2083.0) and busy["foreign_cores"] == 1.3  # the quietest attempt
    assert busy["disturbed"] == "other processes used 1.30 cores (limit 0.15), in all 3 attempts"
    assert bits.quiet_rows([quiet, busy]) == [quiet]

    table = bits.speedup_table([quiet, busy])
    assert check_tables(table, "speedup_table") == 1
    first, second = table.splitlines()[2:]
    assert "color:" not in first and "| quiet |" in first and "11.4×" in first
    assert second.count(f"color:{bits.DISTURBED_COLOR}") == len(bits.SPEEDUP_COLUMNS)
    assert "⚠ disturbed: other processes used 1.30 cores" in second and "2083.0×" in second

    summary = bits.speedup_summary([quiet, busy])
    assert "11.4×" in summary and "5.7×" in summary
    assert "2083" not in summary and "M=8 K=768 N=768: other processes used 1.30 cores" in summary

    fig = bits.speedup_figure([quiet, busy], {quiet["label"]: {"x_prepacked": 11.0}})
    assert_titled(fig)
    assert list(fig.data[0].x) == ["M=128 K=768 N=768", "M=8 K=768 N=768 (disturbed)"]
    for trace in fig.data[:2]:
        assert list(trace.marker.opacity) == [1.0, 0.35] and list(trace.marker.pattern.shape) == ["", "x"]
        assert trace.customdata[1] == f"disturbed: {busy['disturbed']}"
    assert list(fig.data[0].text) == ["11.4×", "(2083.0×)"]
    assert "disturbed" in fig.layout.title.text


def test_scattered_rounds_are_a_disturbance_too_and_an_all_disturbed_run_has_no_headline(fake_bench):
    scattered = {**QUIET, "torch_fp32": [1e-3, 3e-3, 1e-3, 5e-3, 1e-3]}
    fake_bench([None], [scattered])  # no /proc/stat: only the scatter can tell
    (row,) = bits.measure_speedups([(1, 768, 768)], rounds=5, retries=0)
    assert not row["quiet"] and row["attempts"] == 1
    assert row["disturbed"].startswith("rounds scattered by ") and row["disturbed"].endswith("(timed once)")
    summary = bits.speedup_summary([row])
    assert summary.startswith("No speed-up from this run") and f"{row['x_prepacked']:.1f}×" not in summary


def test_markdown_table_escapes_pipes_so_it_stays_one_table():
    from md_tables import check_tables

    rows = [{"module": "query", "mean |λ|": 0.5, "max|W1 + W2 − W|": "1e-7", "note": "a|b\nc"}]
    text = viz.markdown_table(rows)
    assert check_tables(text, "markdown_table") == 1
    assert "mean \\|λ\\|" in text and "a\\|b c" in text
    # the unescaped table is what the check exists to catch
    raw = "| module | mean |λ| |\n|---|---:|\n| query | 0.5 |"
    with pytest.raises(AssertionError, match="not parsed as one table"):
        check_tables(raw, "raw")
    with pytest.raises(AssertionError, match="3 columns where the header has 2"):
        check_tables("| a | b |\n|---|---|\n| 1 | x|y |", "row")


def test_results_md_tables_parse():
    from md_tables import check_tables

    assert check_tables((ROOT / "docs" / "results.md").read_text(), "docs/results.md") >= 5
    assert check_tables((ROOT / "docs" / "benchmarks.md").read_text(), "docs/benchmarks.md") >= 2
