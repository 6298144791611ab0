"""HTML report builder, figure builders and the pairing report on the tiny pair."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from semalign_lens.core.errors import SemalignError
from semalign_lens.reports import page as R
from semalign_lens.reports.page import Report, markdown_to_html
from semalign_lens.reports.plots import agreement_heatmap, attribution_bars, layer_metric_bars

PLOTLY_BANNER = "plotly.js v"  # first line of the inlined bundle


def ranker_table() -> pd.DataFrame:
    rows = []
    for method, scores in {"grad_x_act": [-0.5, 0.2, 1.0], "seeking": [3.0, 1.0, 2.0]}.items():
        for layer, s in enumerate(scores):
            rows.append({"method": method, "layer": layer, "score": s, "ci_low": s - 0.1, "ci_high": s + 0.2,
                         "unit": "u"})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ builder


def test_report_is_self_contained_with_plotly_once(tmp_path, tiny_pair):
    rep = Report("My <run>", subtitle="sub *title*")
    rep.add_heading("Section A").add_markdown("Hello **world** with `code` and <script>alert(1)</script>\n\n- one\n- two")
    rep.add_figure(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])), caption="first", name="first")
    rep.add_figure(go.Figure(go.Bar(x=[1, 2], y=[3, 4])), caption="second")
    rep.add_table(pd.DataFrame({"layer": [0, 1], "score": [0.123456, 2.5], "text": ["<b>x</b>", "y"]}),
                  caption="Scores")
    rep.add_provenance(("teacher", tiny_pair.teacher), ("student", tiny_pair.student), seed=7, extra={"task": "facts"})
    path = rep.write(tmp_path / "out" / "report.html")
    page = path.read_text(encoding="utf-8")
    assert page.count(PLOTLY_BANNER) == 1  # the bundle is inlined once for two figures
    assert not re.search(r"<script[^>]*\ssrc=", page)  # no script is fetched when the page is opened
    assert page.count('class="plotly-graph-div"') == 2 and "semalign-fig-2" in page
    assert "<strong>world</strong>" in page and "<code>code</code>" in page and "<li>two</li>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;x&lt;/b&gt;" in page  # escaped
    assert "0.1235" in page and "Scores" in page and "My &lt;run&gt;" in page
    # provenance: model sources, mode, dtype, seed, package versions
    assert "tiny-teacher" in page and "tiny-student" in page and ">raw<" in page and ">float32<" in page
    assert re.search(r"<td>seed</td>\s*<td>7</td>", page)
    assert re.search(r"<td>version: torch</td>\s*<td>\d", page) and "version: transformer-lens" in page
    assert not list(path.parent.glob("*.tmp"))


def test_extend_merges_sections_with_unique_anchors_and_notes_once():
    inner = Report("inner").add_heading("Models", level=3).add_note("caveat").add_markdown("inner text")
    outer = Report("outer").add_heading("Models").add_heading("Results").add_note("caveat").add_heading("Models")
    page = outer.extend(inner).to_html()
    ids = re.findall(r'<h\d id="([^"]+)">', page)
    assert ids == ["models", "results", "models-2", "models-3"]  # unique, in page order
    assert re.findall(r'href="#([^"]+)"', page) == ["models", "results", "models-2"]  # the nav lists level 2
    assert outer.notes == ["caveat"] and page.count("caveat") == 2 and "inner text" in page


def test_report_without_figures_has_no_plotly_and_checks_input(tmp_path):
    page = Report("t").add_markdown("x").to_html()
    assert PLOTLY_BANNER not in page
    with pytest.raises(SemalignError, match="must end in .html"):
        Report("t").write(tmp_path / "r.txt")
    with pytest.raises(SemalignError, match="plotly figure"):
        Report("t").add_figure("not a figure")
    with pytest.raises(SemalignError, match="DataFrame"):
        Report("t").add_table([1, 2])


def test_png_export_is_skipped_cleanly_without_kaleido_or_browser(tmp_path, monkeypatch):
    real = R.importlib.util.find_spec
    monkeypatch.setattr(R.importlib.util, "find_spec", lambda name, *a: None if name == "kaleido" else real(name, *a))
    ok, reason = R.png_export_available()
    assert not ok and "kaleido" in reason
    rep = Report("t").add_figure(go.Figure(), name="fig")
    path = rep.write(tmp_path / "r.html", png=True)
    assert path.exists() and not (tmp_path / "r_figures").exists()
    assert rep.notes and "PNG export skipped" in rep.notes[0] and "PNG export skipped" in path.read_text()
    rep.write(tmp_path / "r.html", png=True)
    assert len(rep.notes) == 1  # written twice, noted once


def test_png_export_when_available(tmp_path):
    ok, reason = R.png_export_available()
    if not ok:
        pytest.skip(f"PNG export unavailable: {reason}")
    rep = Report("t").add_figure(go.Figure(go.Bar(x=[1], y=[2])), name="bar")
    rep.write(tmp_path / "r.html", png=True)
    assert (tmp_path / "r_figures" / "bar.png").stat().st_size > 0


def test_markdown_subset():
    html = markdown_to_html("# Title\npara *it* [link](http://x.y)\nsame para\n\n1. a\n2. b\n- c")
    assert html.startswith("<h1>Title</h1>")
    assert "<p>para <em>it</em> <a href=\"http://x.y\">link</a> same para</p>" in html
    assert "<ol><li>a</li><li>b</li></ol><ul><li>c</li></ul>" in html.replace("\n", "")


# ------------------------------------------------------------------------------------------ figures


def test_attribution_bars_centre_signed_rows_on_zero():
    fig = attribution_bars(ranker_table())
    assert isinstance(fig, go.Figure) and len(fig.data) == 2
    signed, positive = fig.layout.yaxis.range, fig.layout.yaxis2.range
    assert signed is not None and signed[0] == pytest.approx(-signed[1])  # grad_x_act has negative bars
    assert positive is None  # one-signed scores keep plotly's range
    assert fig.layout.xaxis2.title.text and fig.layout.yaxis.title.text
    bar = fig.data[0]
    assert list(bar.error_y.array) == pytest.approx([0.2, 0.2, 0.2])
    assert list(bar.error_y.arrayminus) == pytest.approx([0.1, 0.1, 0.1])
    with pytest.raises(SemalignError, match="lacks columns"):
        attribution_bars(pd.DataFrame({"method": ["a"]}))


def test_agreement_heatmap_and_grouped_bars():
    table = pd.DataFrame(np.array([[1.0, -0.5], [-0.5, 1.0]]), index=["a", "b"], columns=["a", "b"])
    fig = agreement_heatmap(table)
    assert isinstance(fig, go.Figure)
    axis = fig.layout.coloraxis
    assert (axis.cmin, axis.cmax, axis.cmid) == (-1, 1, 0.0)
    assert fig.layout.xaxis.title.text == "method"
    bars = layer_metric_bars(pd.DataFrame({"layer": [0, 1], "value": [0.2, 0.9], "kind": ["p", "p"]}),
                             x="layer", y="value", color="kind", y_range=(0, 1))
    assert tuple(bars.layout.yaxis.range) == (0, 1) and bars.layout.xaxis.title.text == "layer"


# ------------------------------------------------------------------------------------------ pairing report


def test_pairing_report_on_tiny_pair(tmp_path, tiny_pair):
    from semalign_lens.reports.pairing import pairing_report

    out = pairing_report(tiny_pair.teacher, tiny_pair.student, "facts", tmp_path / "pairing.html", n_prompts=8,
                         cka_prompts=24, n_boot=50, strategy="cka", progress=False)
    page = out.path.read_text(encoding="utf-8")
    assert page.count(PLOTLY_BANNER) == 1
    for section in ("Models", "Layer attribution (teacher)", "Method agreement", "Teacher × student CKA", "Pairing",
                    "Teacher × student similarity: the measures side by side", "Verdict", "Heads of the paired layers",
                    "Semantic-basis fidelity", "Timings", "Provenance"):
        assert f">{section}</h2>" in page, section
    assert page.count('class="plotly-graph-div"') == 6  # attribution, agreement, measures, heads, CKA, fidelity
    assert "Sub-layers" not in page  # opt-in
    assert "monotone CKA path" in page and "Kendall tau" in page and "tiny-teacher" in page
    assert set(out.attribution["method"]) == set(__import__("semalign_lens.lens.attribution").attribution.METHODS)
    assert out.cka.shape == (tiny_pair.teacher.cfg.n_layers + 1, tiny_pair.student.cfg.n_layers + 1)
    assert out.pairing.strategy == "cka" and len(out.pairing) == tiny_pair.student.cfg.n_layers
    assert set(out.pairings) == {"proportional", "attribution", "cka"}
    assert out.fidelity is not None and {"teacher round trip", "teacher -> student"} <= set(out.fidelity["side"])
    assert out.timings["total"] > 0


def test_pairing_report_with_one_method_and_a_model_card(tmp_path, tiny_pair):
    import dataclasses

    from semalign_lens.reports.pairing import pairing_report

    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "MODEL_CARD.md").write_text("# Tiny student\ntrained on <nothing>")
    student = tiny_pair.student
    saved = student.provenance
    student.provenance = dataclasses.replace(saved, path=str(tmp_path / "student"))
    try:
        out = pairing_report(tiny_pair.teacher, student, "facts", tmp_path / "one.html", methods=["grad_x_act"],
                             n_prompts=6, cka_prompts=8, n_boot=20, strategy="proportional", progress=False)
    finally:
        student.provenance = saved
    page = out.path.read_text(encoding="utf-8")
    assert set(out.attribution["method"]) == {"grad_x_act"}
    assert "student model card (MODEL_CARD.md)" in page and "trained on &lt;nothing&gt;" in page
    assert len(out.pairing) == student.cfg.n_layers  # proportional pairs every student layer


def _hf_states(hf, batch, hf_outputs) -> dict[str, list[torch.Tensor]]:
    """Float64 token rows (first token dropped) of the plain HF model, read by hooks on its own modules: the
    residual after the embeddings and after each decoder layer, and each layer's attention and MLP outputs."""
    out = hf_outputs(hf, batch.tokens)
    keep = batch.mask.clone()
    keep[:, 0] = False
    return {k: [v[keep].double() for v in values] for k, values in out.items()}


def _debiased_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased-HSIC CKA from the n x n linear Grams (Song et al. 2012), float64."""
    def hsic1(k, ll):
        n = k.shape[0]
        k, ll = k - torch.diag(k.diagonal()), ll - torch.diag(ll.diagonal())
        return float((torch.trace(k @ ll) + k.sum() * ll.sum() / ((n - 1) * (n - 2))
                      - 2 * (k.sum(0) @ ll.sum(0)) / (n - 2)) / (n * (n - 3)))
    k, ll = x @ x.T, y @ y.T
    return hsic1(k, ll) / (hsic1(k, k) * hsic1(ll, ll)) ** 0.5


def _procrustes_angle(x: torch.Tensor, y: torch.Tensor) -> float:
    """Williams et al.'s angular shape distance in closed form, numpy's SVD on the centred states."""
    x, y = (x - x.mean(0)).numpy(), (y - y.mean(0)).numpy()
    nuclear = np.linalg.svd(x.T @ y, compute_uv=False).sum()
    return float(np.arccos(np.clip(nuclear / (np.linalg.norm(x) * np.linalg.norm(y)), -1, 1)))


def test_pairing_report_reads_the_measures_side_by_side_with_stitching_sublayers_and_heads(tmp_path, tiny_pair,
                                                                                            tiny_hf, hf_outputs):
    from semalign_lens.lens.inspection import similarity_batch
    from semalign_lens.lens.pairing import make_pairing
    from semalign_lens.reports.pairing import pairing_report

    out = pairing_report(tiny_pair.teacher, tiny_pair.student, "facts", tmp_path / "measures.html", n_prompts=6,
                         methods=["grad_x_act"], cka_prompts=16, n_boot=20, fidelity_tokens=32, permutations=3,
                         stitching=True, strategy="stitch", sublayers=True, progress=False)
    page = out.path.read_text(encoding="utf-8")
    for section in ("Teacher × student similarity: the measures side by side", "Verdict",
                    "Sub-layers: the attention write and the MLP write of each block", "Heads of the paired layers"):
        assert f">{section}</h2>" in page, section
    assert page.count('class="plotly-graph-div"') == 8  # + measures, attn, mlp, heads
    assert "Diagonal</strong>" in page and "Against the null:</strong>" in page
    assert list(out.measures) == ["cka_debiased", "cka", "procrustes", "mutual_knn"]
    assert list(out.comparison.best.columns[:5]) == [*out.measures, "stitch"]
    n_t, n_s = tiny_pair.teacher.cfg.n_layers, tiny_pair.student.cfg.n_layers
    stitched = make_pairing("stitch", n_t, n_s, stitching=out.stitching)
    assert [(p.student_layer, p.teacher_low) for p in out.pairing] == [(p.student_layer, p.teacher_low)
                                                                        for p in stitched]
    assert set(out.pairings) == {"proportional", "attribution", "cka", "stitch"}
    assert [(h.teacher_layer, h.student_layer) for h in out.heads] == [(p.nearest_teacher_layer, p.student_layer)
                                                                        for p in out.pairing]
    assert out.timings["stitching map"] > 0

    # float64 references on the plain HF models' own modules, on the tokens the inspection read
    batch = similarity_batch(tiny_hf[2], out.task, out.settings)
    teacher, student = _hf_states(tiny_hf[0], batch, hf_outputs), _hf_states(tiny_hf[1], batch, hf_outputs)
    assert out.n_cka_tokens == len(teacher["resid"][0])
    for point in ("attn_out", "mlp_out"):
        got = out.sublayers[point]["cka_debiased"].observed
        assert got.shape == (n_t, n_s)
        want = torch.tensor([[_debiased_cka(x, y) for y in student[point]] for x in teacher[point]],
                            dtype=torch.float64)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    got = out.measures["procrustes"].observed
    want = torch.tensor([[_procrustes_angle(x, y) for y in student["resid"]] for x in teacher["resid"]],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_pairing_report_bad_input(tmp_path, tiny_pair):
    from semalign_lens.reports.pairing import pairing_report

    with pytest.raises(SemalignError, match="unknown pairing strategy"):
        pairing_report(tiny_pair.teacher, tiny_pair.student, "facts", tmp_path / "x.html", strategy="random")
    with pytest.raises(SemalignError, match="attribution_method 'seeking' must be one of the methods run"):
        pairing_report(tiny_pair.teacher, tiny_pair.student, "facts", tmp_path / "x.html",
                       methods=["grad_x_act"], attribution_method="seeking")
    with pytest.raises(SemalignError, match="must be a model source"):
        pairing_report(object(), tiny_pair.student, "facts", tmp_path / "x.html")


@pytest.mark.slow
def test_pairing_report_on_smollm2(tmp_path, smollm2):
    from semalign_lens.models.load import load_model
    from semalign_lens.reports.pairing import pairing_report

    try:
        student = load_model("stdlib-student")
    except SemalignError as err:
        pytest.skip(str(err))
    out = pairing_report(smollm2, student, "facts", tmp_path / "smol.html", n_prompts=8, cka_prompts=16, n_boot=100,
                         methods=["grad_x_act", "patch_denoise", "ablate_zero"], progress=False)
    assert out.path.exists() and len(out.attribution) == 3 * smollm2.cfg.n_layers


def test_provenance_shows_paths_under_home_as_tilde(tiny_pair, monkeypatch, tmp_path):
    import dataclasses
    from pathlib import Path

    from semalign_lens.reports.page import home_relative, provenance_tables

    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path))
    assert home_relative(str(tmp_path / ".cache" / "m")) == "~/.cache/m"
    assert home_relative("/opt/models/m") == "/opt/models/m" and home_relative(str(tmp_path) + "x") != "~x"
    import semalign_lens

    shipped = str(Path(semalign_lens.__file__).resolve().parent / "data" / "tasks" / "facts.json")
    assert home_relative(shipped) == "semalign_lens/data/tasks/facts.json"
    model = tiny_pair.student
    saved = model.provenance
    model.provenance = dataclasses.replace(saved, path=str(tmp_path / "models" / "student"))
    try:
        table = provenance_tables(("student", model))["models"]
    finally:
        model.provenance = saved
    assert table.loc[0, "path"] == "~/models/student"


def test_training_figures_have_whole_steps_smoothed_curves_and_plain_panel_titles():
    from semalign_lens.reports.run import PROJECTION_TITLES, loss_figure, projection_figure, smooth
    from semalign_lens.training.diagnostics import PROJECTION_METRICS

    records = [{"kind": "train", "step": s, "stage_label": "L0", "loss": float(10 - s), "ce": float(10 - s),
                "kl": 1.0} for s in range(1, 5)]
    records += [{"kind": "diag", "step": s, "student_layer": 0, **{m: 0.5 for m in PROJECTION_METRICS}}
                for s in (0, 4)]
    fig = loss_figure(records, ["ce", "kl"])
    assert fig.layout.xaxis.tickformat == "d" and fig.layout.xaxis.dtick == 1
    assert {t.name for t in fig.data} == {"loss", "ce", "kl", "loss (per step)", "ce (per step)", "kl (per step)"}
    assert "each step" in fig.layout.title.text  # 4 steps: nothing to smooth
    one = loss_figure(records, ["ce"])  # one term: the total is that term, drawn once
    assert {t.name for t in one.data} == {"ce", "ce (per step)"} and "weighted total" not in one.layout.title.text
    long = [{"kind": "train", "step": s, "loss": float(s), "ce": float(s)} for s in range(1, 37)]
    assert "trailing mean of 3 steps" in loss_figure(long, ["ce"]).layout.title.text  # 36 steps: window 3
    assert smooth([1, 2, 3, 4], 2) == [1.0, 1.5, 2.5, 3.5]
    panels = projection_figure(records)
    titles = {a.text for a in panels.layout.annotations}
    assert titles == set(PROJECTION_TITLES.values()) and set(PROJECTION_TITLES) == set(PROJECTION_METRICS)
    assert not any("=" in t or "_" in t for t in titles)


def test_tables_show_a_dash_for_every_missing_value():
    import pandas as pd

    from semalign_lens.reports.page import Report

    report = Report("t").add_table(pd.DataFrame({"rank": pd.array([1, None], dtype="Int64"), "why": [None, "x"],
                                                 "score": [1.5, float("nan")], "pairs": [[1, 2], None]}))
    html = report.blocks[-1].html
    assert "NA" not in html and "None" not in html and html.count("<td>–</td>") == 4
