"""The demo and pairing reports in a real browser (headless Chromium; skipped where it is not installed).

Each page is opened at 1400 px with every host name unresolvable, after a probe script is appended that
records, once the page has loaded: how many plotly figures there are, how many drew their SVG, and whether
anything is wider than the window. A request to the network would fail and show as a console error, so "no
console errors" also means "no network requests".
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)")

PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const figures = [...document.querySelectorAll(".plotly-graph-div")];
  const b = document.body;
  b.setAttribute("data-figures", figures.length);
  b.setAttribute("data-drawn", figures.filter(f => f.querySelector("svg.main-svg")).length);
  b.setAttribute("data-overflow", document.documentElement.scrollWidth - window.innerWidth);
}, 1500));
</script>"""


def render(page, tmp_path) -> tuple[dict[str, int], list[str]]:
    """(the probe's numbers, console errors) of `page` opened in headless Chromium at 1400 x 1000."""
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    proc = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                           "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=15000",
                           "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}",
                           "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=180)
    body = re.search(r"<body([^>]*)>", proc.stdout)
    attrs = dict(re.findall(r'data-(\w+)="(-?\d+)"', body.group(1) if body else ""))
    errors = [line for line in proc.stderr.splitlines() if "CONSOLE" in line and ("rror" in line or "Failed" in line)]
    return {k: int(v) for k, v in attrs.items()}, errors


def check(page, tmp_path) -> None:
    numbers, errors = render(page, tmp_path)
    assert numbers, "the probe did not run: the page did not finish loading"
    assert numbers["figures"] > 0 and numbers["drawn"] == numbers["figures"], numbers
    assert numbers["overflow"] <= 0, f"the page is {numbers['overflow']} px wider than 1400 px"
    assert not errors, errors


def test_demo_report_renders_in_chromium(tmp_path):
    from semalign_lens.demo import run_demo

    result = run_demo("tiny", out_dir=tmp_path / "demo", progress=False)
    check(result.report_path, tmp_path)


def test_pairing_report_renders_in_chromium(tmp_path, tiny_pair):
    from semalign_lens.reports.pairing import pairing_report

    out = tmp_path / "pairing.html"
    pairing_report(tiny_pair.teacher, tiny_pair.student, "facts", out, n_prompts=6, methods=["grad_x_act"],
                   cka_prompts=6, cka_tokens=96, fidelity_tokens=32, n_boot=20, progress=False)
    check(out, tmp_path)
