"""A non-editable install works: ``pip install --no-deps .`` into a fresh virtual environment (nothing downloaded),
then chapter 1's explorer and a grader run from a folder outside the checkout, importing the installed copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

from conftest import ROOT



SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import binlab
    assert Path(binlab.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), binlab.__file__

    from binlab.explorers import bits
    ui, fig, controls = bits.make_xnor_explorer(n_bits=8, seed=1)
    before = list(fig.data[0].z[0])
    controls["a"][0].value = not controls["a"][0].value  # flip a sign, as a learner clicks
    assert list(fig.data[0].z[0]) != before, "the figure did not redraw"
    assert bits.recorded_speedups(Path.cwd() / "no-benchmarks.md") == {}

    from binlab.grader import core
    ex = core.load_exercise("01_popcount")
    result = ex.grade(ex.reference_namespace(), isolate=False)
    assert result.full_marks, result.report()
    print("installed binlab ok:", binlab.__file__)
""")


def test_a_non_editable_install_runs_outside_the_checkout(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "binlab", src / "binlab", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # this environment's packages (torch, numba, ...) as a plain path: its .pth files (the editable binlab among
    # them) are not processed, so binlab can only come from the install below
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                          str(src)], capture_output=True, text=True, env=env, timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    shutil.rmtree(src)  # nothing may read the source tree any more
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run([str(python), "-c", SCRIPT], cwd=elsewhere, capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "installed binlab ok" in run.stdout and str(venv) in run.stdout
    listing = subprocess.run([str(venv / "bin" / "binlab"), "grade", "--list"], cwd=elsewhere, capture_output=True,
                             text=True, env=env, timeout=300)
    assert listing.returncode == 0 and "01_popcount" in listing.stdout, listing.stderr
