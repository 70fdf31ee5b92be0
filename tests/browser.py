"""Headless Chromium for report tests: render a page, dump its DOM, take a screenshot.

Debian's ``chromium`` package (``make system-deps`` installs it). As root it needs
``--no-sandbox``. Each call uses its own throw-away profile directory.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

CHECK_ID = "zipscribe-render-check"

# Appended to a copy of the page under test: after layout, it reports every inline SVG's
# rendered size and any script error into the DOM, where --dump-dom shows it.
_CHECK_SCRIPT = """
<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message)));
window.addEventListener('load', () => {
  const rect = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const svgs = Array.from(document.querySelectorAll('svg'));
  const sizes = svgs.map(s => {
    const r = s.getBoundingClientRect(); return Math.round(r.width) + 'x' + Math.round(r.height); });
  // per plot (matplotlib names its SVG groups): the legends, the data patches (bars; not the figure's
  // and axes' backgrounds, not the legend's own patches) and every text, as laid out
  const plots = svgs.map(s => {
    const axes = Array.from(s.querySelectorAll('g[id^="axes"]')).map(rect);
    const area = r => Math.max(0, r[2] - r[0]) * Math.max(0, r[3] - r[1]);
    const biggest = Math.max(0, ...axes.map(area));
    const bars = Array.from(s.querySelectorAll('g[id^="patch"]'))
      .filter(g => !g.closest('g[id^="legend"]')).map(rect).filter(r => area(r) > 0 && area(r) < 0.5 * biggest);
    return {box: rect(s), legends: Array.from(s.querySelectorAll('g[id^="legend"]')).map(rect), bars: bars,
            texts: Array.from(s.querySelectorAll('g[id^="text"]')).map(rect)};
  });
  const div = document.createElement('div');
  div.id = '%s';
  div.textContent = JSON.stringify({svgs: sizes, plots: plots, errors: window.__errors, title: document.title});
  document.body.appendChild(div);
});
</script>
""" % CHECK_ID


def chromium() -> Optional[str]:
    """Debian's ``chromium`` (the tests that need it are marked ``needs_tools("chromium")``)."""
    return shutil.which("chromium")


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    binary = chromium()
    assert binary, "chromium not installed"
    with tempfile.TemporaryDirectory(prefix="zs-chromium-") as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def screenshot(page: Path, png: Path, size: str = "1200,1600") -> subprocess.CompletedProcess:
    """``chromium --headless --screenshot=png --window-size=size file://page``."""
    return _run([f"--screenshot={png}", f"--window-size={size}", page.resolve().as_uri()])


def render_check(page: Path) -> tuple[subprocess.CompletedProcess, str]:
    """Load a copy of ``page`` with the check script and return (process, dumped DOM)."""
    with tempfile.TemporaryDirectory(prefix="zs-page-") as tmp:
        copy = Path(tmp) / "page.html"
        text = page.read_text(encoding="utf-8")
        copy.write_text(text.replace("</body>", _CHECK_SCRIPT + "</body>"), encoding="utf-8")
        proc = _run(["--dump-dom", "--virtual-time-budget=5000", copy.as_uri()])
    return proc, proc.stdout


def pixels(png: Path) -> np.ndarray:
    """RGB floats in [0, 1], shape (H, W, 3)."""
    import matplotlib.image

    return np.asarray(matplotlib.image.imread(str(png)))[..., :3]
