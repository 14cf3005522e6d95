"""Helpers for ``tests/test_ui.py``: a throwaway JupyterLab server and headless Chromium.

Everything here is isolated from the user's own Jupyter setup:

* the server runs on 127.0.0.1, on a free port, with a random token and no browser;
* ``JUPYTER_CONFIG_DIR``, ``JUPYTER_DATA_DIR``, ``JUPYTER_RUNTIME_DIR``, the lab settings and
  workspaces folders and ``IPYTHONDIR`` all point into a temporary folder, so ``~/.jupyter``,
  ``~/.local/share/jupyter`` and ``~/.ipython`` play no part. The lab extensions of anywidget,
  ipywidgets and plotly stay visible: they live in the venv's ``share/jupyter``, which Jupyter
  always searches (``sys.prefix``), whatever ``JUPYTER_DATA_DIR`` says;
* the notebooks are *copies* in that temporary folder, and autosave is off as well, so an executed
  notebook is never written back into ``book/`` with its outputs. ``binlab`` is imported from the
  checkout through the venv's editable install, and ``BINLAB_ROOT`` points the chapters at the checkout's
  ``docs/`` and ``runs/``;
* the kernel runs with ``BINLAB_FAST=1``.

Chromium is Debian's ``/usr/bin/chromium`` (``make test-ui`` installs it); Playwright never
downloads a browser here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
CHROMIUM = os.environ.get("BINLAB_UI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]

# JupyterLab user settings written into the throwaway settings folder.
LAB_SETTINGS = {
    # Never write the executed notebook back to disk (it is a copy anyway).
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    # No news prompt / update check toasts over the notebook; offline anyway.
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    # Keep every cell in the DOM (no virtual scrolling), so all outputs can be inspected.
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(text: str, n: int = 4000) -> str:
    return text if len(text) <= n else "...\n" + text[-n:]


class LabServer:
    """A JupyterLab server on a copy of the notebooks, in a temporary folder.

    ``LabServer(notebooks)`` copies ``book/`` (and ``exercises/`` when present) of the checkout, and
    any notebook outside them, into the temporary folder; :meth:`url_for` gives the lab URL of a
    notebook's copy. Use as a context manager: the server, its kernels and the folder are removed
    on exit, also on failure.
    """

    def __init__(self, notebooks, start_timeout: float = 180.0):
        self.notebooks = [Path(p).resolve() for p in notebooks]
        self.start_timeout = start_timeout
        self.tmp = Path(tempfile.mkdtemp(prefix="binlab-ui-"))
        self.root_dir = self.tmp / "root"
        self.token = uuid.uuid4().hex
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.tmp / "jupyter.log"
        self._log = None
        self.rel: dict[Path, str] = {}

    # -- setup -----------------------------------------------------------------------------
    def _copy_notebooks(self) -> None:
        ignore = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.nbi", "*.nbc")
        self.root_dir.mkdir(parents=True)
        for d in ("book", "exercises"):
            if (ROOT / d).is_dir():
                shutil.copytree(ROOT / d, self.root_dir / d, ignore=ignore)
        for nb in self.notebooks:
            try:
                rel = nb.relative_to(ROOT).as_posix()
            except ValueError:
                rel = None
            if rel is None or not (self.root_dir / rel).is_file():
                # A notebook from elsewhere (a scratch notebook): copy just the file.
                rel = f"external/{nb.name}"
                (self.root_dir / "external").mkdir(exist_ok=True)
                shutil.copy2(nb, self.root_dir / rel)
            self.rel[nb] = rel

    def _environment(self) -> dict:
        dirs = {name: self.tmp / name for name in
                ("config", "data", "runtime", "lab-settings", "lab-workspaces", "ipython")}
        for p in dirs.values():
            p.mkdir()
        for plugin, values in LAB_SETTINGS.items():
            f = dirs["lab-settings"] / f"{plugin}.jupyterlab-settings"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(values))
        env = dict(os.environ)
        for var in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "JUPYTER_PREFER_ENV_PATH",
                    "JUPYTER_TOKEN", "JUPYTER_PLATFORM_DIRS", "PYTHONSTARTUP"):
            env.pop(var, None)
        env.update(
            JUPYTER_CONFIG_DIR=str(dirs["config"]),
            JUPYTER_DATA_DIR=str(dirs["data"]),
            JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
            JUPYTERLAB_SETTINGS_DIR=str(dirs["lab-settings"]),
            JUPYTERLAB_WORKSPACES_DIR=str(dirs["lab-workspaces"]),
            IPYTHONDIR=str(dirs["ipython"]),
            JUPYTER_PREFER_ENV_PATH="1",
            BINLAB_FAST="1",
            BINLAB_ROOT=str(ROOT),  # the copies' docs/ and runs/ are the checkout's
            PYTHONUNBUFFERED="1",
            PYDEVD_DISABLE_FILE_VALIDATION="1",
        )
        env.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")
        env.setdefault("HF_HUB_OFFLINE", "1")
        return env

    def start(self) -> "LabServer":
        self._copy_notebooks()
        env = self._environment()
        cmd = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.open_browser=False",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.news_url=None",
            # No PyPI queries from the extension manager.
            "--LabApp.extension_manager=readonly",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # containers and CI run as root
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.root_dir, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.proc.returncode} before it "
                                   f"served anything; its log:\n{self.log()}")
            try:
                self.api("GET", "/api/status", timeout=5)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer on {self.base} within "
                           f"{self.start_timeout:.0f} s; its log:\n{self.log()}")

    # -- use -------------------------------------------------------------------------------
    def api(self, method: str, path: str, timeout: float = 30):
        req = urllib.request.Request(self.base + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def url_for(self, notebook) -> str:
        """Lab URL that opens the copy of ``notebook`` in a reset (empty) workspace, logged in."""
        rel = self.rel[Path(notebook).resolve()]
        return f"{self.base}/lab/tree/{rel}?reset&token={self.token}"

    def copy_of(self, notebook) -> Path:
        return self.root_dir / self.rel[Path(notebook).resolve()]

    def shutdown_kernels(self) -> None:
        """Stop every kernel of the server (frees the cores between notebooks)."""
        try:
            for k in self.api("GET", "/api/kernels") or []:
                try:
                    self.api("DELETE", f"/api/kernels/{k['id']}", timeout=30)
                except (urllib.error.URLError, OSError):
                    pass
        except (urllib.error.URLError, OSError):
            pass

    def log(self, n: int = 6000) -> str:
        try:
            return tail(self.log_path.read_text(errors="replace"), n)
        except OSError:
            return "(no log)"

    # -- teardown --------------------------------------------------------------------------
    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self.shutdown_kernels()
            try:
                self.api("POST", "/api/shutdown", timeout=10)
            except (urllib.error.URLError, OSError):
                pass
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        if proc is not None:
            # The server ran in its own session: end that process group (kernels included).
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "LabServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def launch_chromium(playwright, user_data_dir: Path):
    """Headless Debian Chromium in a new, empty profile; returns a Playwright BrowserContext."""
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"no Chromium at {CHROMIUM}: run `make test-ui` (it installs Debian's "
                           "chromium with apt-get) or `apt-get install -y chromium`")
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 1000}, accept_downloads=False,
    )
