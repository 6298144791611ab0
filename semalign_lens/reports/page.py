"""A small builder for self-contained HTML reports (pairing report, trainer runs, demos).

    report = Report("Layer pairing: smollm2-135m -> stdlib-student")
    report.add_markdown("Scores are **bootstrap means** over prompts.")
    report.add_figure(fig, caption="Attribution per method")
    report.add_table(df, caption="Pairing")
    report.add_provenance(teacher, student, seed=0)
    report.write("report.html", png=True)

Why self-contained: a report is opened from disk, mailed and archived, often without network, so plotly.js
is inlined **once** in the page head (≈4.6 MB) and every figure is a `<div>` that uses it
(`fig.to_html(full_html=False, include_plotlyjs=False)`); per-figure inlining would cost 4.6 MB per figure,
and the CDN variant does not render offline. Tables come from pandas (`DataFrame.to_html`, HTML-escaped).
The provenance section records package versions, model sources, loading mode, dtype, weight hashes, the
seed and the machine, from each model's `model.provenance` (`models.load.Provenance`).

PNG export is optional: kaleido ≥ 1 drives a Chromium found on PATH / `BROWSER_PATH`; without both,
`write(png=True)` skips the export and says why in the report and in `Report.notes`.
"""

from __future__ import annotations

import datetime as _dt
import html
import importlib.util
import os
import platform
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.checks import check_output_file
from ..core.errors import SemalignError, writing
from ..models.load import package_versions

PROVENANCE_PACKAGES = ("semalign-lens", "transformer-lens", "transformers", "torch", "safetensors", "plotly",
                       "pandas", "numpy", "scipy", "kaleido")
BROWSERS = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome", "google-chrome-stable",
            "chrome")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #ddd;padding-bottom:.3em}h2{margin-top:2em;border-bottom:1px solid #eee}
.table-wrap{max-width:100%;overflow-x:auto}
table.report-table{border-collapse:collapse;font-size:13px;margin:.5em 0 1em}
table.report-table th,table.report-table td{border:1px solid #ddd;padding:3px 8px;text-align:right;
max-width:26em;overflow-wrap:anywhere}
table.report-table th{overflow-wrap:normal;word-break:break-word}
table.report-table th{background:#f5f5f5}table.report-table td:first-child{text-align:left}
.caption{color:#555;font-size:13px;margin:.2em 0}.note{background:#fff8e1;border-left:4px solid #f0c000;
padding:.4em .8em;font-size:13px}code{background:#f3f3f3;padding:0 3px;border-radius:3px}
nav ul{columns:2;font-size:14px}
"""


# ------------------------------------------------------------------------------------------ markdown


def _inline(text: str) -> str:
    """Escape, then the inline subset: `code`, **bold**, *italic*, [text](url)."""
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?!\w)", r"<em>\1</em>", text)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', text)


def markdown_to_html(text: str) -> str:
    """A deliberately small Markdown subset (headings, paragraphs, - / 1. lists, inline code/bold/italic/links).

    Enough for report prose without a Markdown dependency; anything else is shown as escaped text.
    """
    out, para, items, kind = [], [], [], None

    def flush():
        nonlocal para, items, kind
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
        if items:
            tag = "ol" if kind == "ol" else "ul"
            out.append(f"<{tag}>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + f"</{tag}>")
        para, items, kind = [], [], None

    for line in text.strip("\n").splitlines():
        stripped = line.strip()
        heading = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        bullet = re.match(r"^[-*]\s+(.*)$", stripped)
        number = re.match(r"^\d+[.)]\s+(.*)$", stripped)
        if not stripped:
            flush()
        elif heading:
            flush()
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif bullet or number:
            new_kind = "ul" if bullet else "ol"
            if para or (kind and kind != new_kind):
                flush()
            kind = new_kind
            items.append((bullet or number).group(1))
        elif items and line.startswith((" ", "\t")):
            items[-1] += " " + stripped
        else:
            if items:
                flush()
            para.append(stripped)
    flush()
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ provenance


def home_relative(path: str | None) -> str | None:
    """A path as a report shows it: `semalign_lens/...` for a file shipped in the package, `~/...` under the
    home directory, else unchanged. A report is mailed and archived, and the reader's machine is not the
    writer's (the weights hash, not the path, identifies the model)."""
    if not path:
        return path
    package = str(Path(__file__).resolve().parents[1])
    if str(path).startswith(package + "/"):
        return "semalign_lens" + str(path)[len(package):]
    home = str(Path.home())
    return "~" + path[len(home):] if path == home or path.startswith(home + "/") else path


def provenance_tables(*models, seed: int | None = None, extra: Mapping[str, Any] | None = None
                      ) -> dict[str, pd.DataFrame]:
    """{"models": one row per model (role, source, kind, path, weights_sha256, dtype, mode), "run": key/value}.

    A model's `.provenance` may be the record itself (a dict read back from a run directory). Models without one
    (a bare bridge) still get a row, marked 'unknown'. Pass `(role, model)`
    tuples to label rows (teacher/student); otherwise rows are numbered.
    """
    from ..core.precision import cpu_summary

    rows = []
    for i, item in enumerate(models):
        role, model = item if isinstance(item, tuple) else (f"model {i}", item)
        prov = getattr(model, "provenance", None)
        record = dict(prov) if isinstance(prov, Mapping) else prov.to_dict() if prov is not None else {"source": str(getattr(getattr(model, "cfg", None),
                                                                               "model_name", "unknown"))}
        record.pop("versions", None)
        record["path"] = home_relative(record.get("path"))
        rows.append({"role": role, **{k: record.get(k, "unknown") for k in
                                      ("source", "kind", "path", "weights_sha256", "dtype", "mode")}})
    run = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "seed": "not set" if seed is None else seed, "python": sys.version.split()[0],
           "platform": platform.platform(), **{k.replace("_", " "): v for k, v in cpu_summary().items()},
           "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "",
           **{f"version: {k}": v for k, v in package_versions(PROVENANCE_PACKAGES).items()}, **dict(extra or {})}
    return {"models": pd.DataFrame(rows, columns=["role", "source", "kind", "path", "weights_sha256", "dtype", "mode"]),
            "run": pd.DataFrame({"key": list(run), "value": [str(v) for v in run.values()]})}


# ------------------------------------------------------------------------------------------ PNG export


def png_export_available() -> tuple[bool, str]:
    """(available, reason): kaleido ≥ 1 installed and a Chromium on PATH or in BROWSER_PATH."""
    if importlib.util.find_spec("kaleido") is None:
        return False, "kaleido is not installed (pip install 'semalign-lens[png]')"
    browser = os.environ.get("BROWSER_PATH") or next((b for b in BROWSERS if shutil.which(b)), None)
    if not browser:
        return False, "no Chrome/Chromium found on PATH or in BROWSER_PATH (Debian: apt install chromium)"
    return True, f"kaleido + {browser}"


def export_png(fig, path: str | Path, *, scale: float = 2.0) -> Path | None:
    """Write `fig` as PNG; None (and no file) when kaleido or a browser is missing or the export fails."""
    ok, _ = png_export_available()
    if not ok:
        return None
    path = Path(path)
    try:
        fig.write_image(str(path), scale=scale)
    except Exception:  # kaleido raises many types (browser crash, timeout); the HTML stays the artefact
        return None
    return path if path.exists() else None


def export_pngs(figures: Mapping[str, Any], folder: str | Path, *, scale: float = 2.0) -> dict[str, Path]:
    """Write each figure as `<folder>/<name>.png` (name made file-safe) in one browser session (plotly's
    `write_images`: ~1 s a figure here, where `export_png` starts Chromium for each, ~5 s on 2 cores); returns
    {name: path} of those written (none without kaleido or a browser)."""
    ok, _ = png_export_available()
    if not ok or not figures:
        return {}
    import plotly.io as pio

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png" for name in figures}
    try:
        pio.write_images(list(figures.values()), [str(p) for p in paths.values()], scale=scale)
    except Exception:  # one figure can fail the batch: one at a time then, keeping those that work
        return {name: p for name, fig in figures.items() if (p := export_png(fig, paths[name], scale=scale))}
    return {name: p for name, p in paths.items() if p.exists()}


# ------------------------------------------------------------------------------------------ the report


@dataclass
class _Block:
    kind: str  # html | heading | figure
    html: str = ""
    figure: Any = None
    name: str = ""
    caption: str = ""
    level: int = 0


def _dash_if_missing(value):
    """A table cell: "–" for None, pd.NA and NaN (cells may hold lists, so no pd.isna on them)."""
    return "–" if value is None or value is pd.NA or (isinstance(value, float) and value != value) else value


@dataclass
class Report:
    """Sections of prose, figures and tables, written as one self-contained HTML file (see module docs)."""

    title: str
    subtitle: str = ""
    blocks: list[_Block] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    # -- content ---------------------------------------------------------------------------------------
    def add_heading(self, text: str, level: int = 2) -> Report:
        if not 1 <= level <= 6:
            raise SemalignError(f"heading level must be 1..6, got {level}")
        self.blocks.append(_Block("heading", name=text, level=level))
        return self

    def add_markdown(self, text: str) -> Report:
        self.blocks.append(_Block("html", markdown_to_html(text)))
        return self

    def add_note(self, text: str) -> Report:
        """A highlighted remark (a skipped section, a caveat), also kept in `notes` (added once)."""
        if text in self.notes:
            return self
        self.notes.append(text)
        self.blocks.append(_Block("html", f'<div class="note">{_inline(text)}</div>'))
        return self

    def add_html(self, raw: str) -> Report:
        """Trusted raw HTML (not escaped)."""
        self.blocks.append(_Block("html", raw))
        return self

    def add_figure(self, fig, *, caption: str = "", name: str | None = None) -> Report:
        """A plotly figure (anything with `to_html(full_html=..., include_plotlyjs=...)`)."""
        if not hasattr(fig, "to_html"):
            raise SemalignError(f"add_figure needs a plotly figure, got {type(fig).__name__}")
        n = sum(b.kind == "figure" for b in self.blocks)
        self.blocks.append(_Block("figure", figure=fig, name=name or f"figure-{n + 1}", caption=caption))
        return self

    def add_table(self, df: pd.DataFrame, *, caption: str = "", index: bool = False, float_format: str = "{:.4g}",
                  max_rows: int = 500) -> Report:
        """A pandas table (HTML-escaped); longer than `max_rows` shows the first rows and says so."""
        if not isinstance(df, pd.DataFrame):
            raise SemalignError(f"add_table needs a pandas DataFrame, got {type(df).__name__}")
        shown = df.head(max_rows).copy()
        for col in shown.columns:  # na_rep misses None and pd.NA outside float columns (shown as <NA>)
            if shown[col].dtype.kind != "f" and shown[col].isna().any():
                shown[col] = shown[col].astype(object).map(_dash_if_missing)
        table = shown.to_html(index=index, classes="report-table", border=0, escape=True, na_rep="–",
                              float_format=float_format.format)
        more = f'<p class="caption">showing {max_rows} of {len(df)} rows</p>' if len(df) > max_rows else ""
        cap = f'<p class="caption">{_inline(caption)}</p>' if caption else ""
        # Wide tables scroll inside their own box, so the page keeps its width (long cells wrap first)
        self.blocks.append(_Block("html", f'{cap}<div class="table-wrap">{table}</div>{more}'))
        return self

    def extend(self, other: Report) -> Report:
        """Append another report's sections and notes (content built before its place on the page)."""
        self.blocks += other.blocks
        self.notes += [n for n in other.notes if n not in self.notes]
        return self

    def add_provenance(self, *models, seed: int | None = None, extra: Mapping[str, Any] | None = None,
                       heading: str = "Provenance") -> Report:
        """Models (or (role, model) tuples), package versions, seed, machine; see `provenance_tables`."""
        tables = provenance_tables(*models, seed=seed, extra=extra)
        self.add_heading(heading)
        if models:
            self.add_table(tables["models"], caption="Models: source, loading kind, weights hash, dtype and mode")
        return self.add_table(tables["run"], caption="Run: seed, machine and package versions")

    # -- output ----------------------------------------------------------------------------------------
    def _figure_html(self, block: _Block, index: int) -> str:
        div = block.figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"semalign-fig-{index}",
                                   config={"responsive": True, "displaylogo": False})
        cap = f'<p class="caption">{_inline(block.caption)}</p>' if block.caption else ""
        return f'<figure id="{html.escape(block.name)}">{div}{cap}</figure>'

    def _anchors(self) -> dict[int, str]:
        """A unique id per heading (block index -> id): sections merged with `extend` may repeat a title."""
        anchors, seen = {}, set()
        for i, block in enumerate(self.blocks):
            if block.kind == "heading":
                base = re.sub(r"[^a-z0-9]+", "-", block.name.lower()).strip("-") or f"s{i}"
                anchor, n = base, 2
                while anchor in seen:
                    anchor, n = f"{base}-{n}", n + 1
                seen.add(anchor)
                anchors[i] = anchor
        return anchors

    def to_html(self) -> str:
        """The whole page; plotly.js is inlined once, and only when there is at least one figure."""
        from plotly.offline import get_plotlyjs

        figures = [b for b in self.blocks if b.kind == "figure"]
        script = f'<script type="text/javascript">{get_plotlyjs()}</script>' if figures else ""
        anchors = self._anchors()
        toc = [(anchors[i], b.name) for i, b in enumerate(self.blocks) if b.kind == "heading" and b.level == 2]
        nav = ("<nav><ul>" + "".join(f'<li><a href="#{a}">{html.escape(name)}</a></li>' for a, name in toc)
               + "</ul></nav>") if len(toc) > 2 else ""
        body, k = [], 0
        for i, block in enumerate(self.blocks):
            if block.kind == "figure":
                k += 1
                body.append(self._figure_html(block, k))
            elif block.kind == "heading":
                body.append(f'<h{block.level} id="{anchors[i]}">{html.escape(block.name)}</h{block.level}>')
            else:
                body.append(block.html)
        sub = f"<p>{_inline(self.subtitle)}</p>" if self.subtitle else ""
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}'
                f"</title><style>{_CSS}</style>{script}</head><body><h1>{html.escape(self.title)}</h1>{sub}{nav}\n"
                + "\n".join(body) + "\n</body></html>\n")

    def write(self, path: str | Path, *, png: bool = False, png_dir: str | Path | None = None) -> Path:
        """Write the HTML (atomically) and, with `png`, each figure as `<png_dir>/<name>.png` when possible.

        png_dir defaults to `<path stem>_figures/` next to the HTML. Missing kaleido/Chromium is not an error:
        the export is skipped and a note says why.
        """
        path = check_output_file(path, "report path", (".html", ".htm"))
        path.parent.mkdir(parents=True, exist_ok=True)
        if png:
            self._export_pngs(Path(png_dir) if png_dir else path.with_name(path.stem + "_figures"))
        tmp = path.with_name(path.name + ".tmp")
        with writing(path):  # a refused write is one line naming the page; the previous page stays whole
            try:
                tmp.write_text(self.to_html(), encoding="utf-8")
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return path

    def _export_pngs(self, folder: Path) -> None:
        ok, reason = png_export_available()
        if not ok:
            self.add_note(f"PNG export skipped: {reason}.")
            return
        figures = {b.name: b.figure for b in self.blocks if b.kind == "figure"}
        written = export_pngs(figures, folder)
        failed = [name for name in figures if name not in written]
        if failed:
            self.add_note(f"PNG export failed for {', '.join(failed)} ({reason}); the HTML figures are complete.")
