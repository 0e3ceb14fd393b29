"""The HTML parity report: self-contained, and rendered by a real browser (headless Chromium,
Debian's `chromium` package; `make test-browser` installs it and runs these)."""

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from resnet_edge.parity import plots
from resnet_edge.parity import report as reports
from resnet_edge.parity.gates import load_thresholds
from resnet_edge.parity.run import KEEP_DISAGREEMENTS, run_parity

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (make test-browser installs "
                             "Debian's chromium package and runs these)")


@pytest.fixture(scope="module")
def failing_report(calibrated_workdir, tmp_path_factory):
    """Seeded noise five times the spread of normalized images, far outside the ranges int8
    was calibrated on: int8 disagrees with fp32 and its gates fail; fp32 and fp16 pass."""
    noise = tmp_path_factory.mktemp("noise") / "x.npy"
    np.save(noise, np.random.default_rng(0).normal(0, 5, (64, 3, 32, 32)).astype(np.float32))
    return run_parity(calibrated_workdir, f"npy:{noise}", backends=["ort", "trt"],
                      precisions=["fp32", "fp16", "int8"], thresholds=load_thresholds(),
                      keep_disagreements=True)


@pytest.fixture(scope="module")
def labelled_report(calibrated_workdir):
    return run_parity(calibrated_workdir, "digits:test", backends=["ort"], precisions=["fp16", "int8"],
                      thresholds=load_thresholds(), keep_disagreements=True, limit=128)


def test_report_keeps_disagreeing_images_for_the_page_only(failing_report, tmp_path):
    int8 = next(r for r in failing_report["candidates"] if r["precision"] == "int8")
    assert not failing_report["summary"]["passed"] and int8["metrics"]["top1_agreement"] < 0.95
    assert all(r["status"] == "skipped" or plots.verdict(r) == "pass"
               for r in failing_report["candidates"] if r["precision"] != "int8")
    shown = int8["disagreements"]
    assert 0 < len(shown) <= KEEP_DISAGREEMENTS
    assert all(d["reference"] != d["candidate"] and d["label"] is None for d in shown)
    thumbnails = failing_report["_thumbnails"]
    assert {d["image"] for d in shown} <= set(thumbnails)
    assert Image.open(io.BytesIO(thumbnails[shown[0]["image"]])).size == (96, 96)
    reports.write_json(failing_report, tmp_path / "p.json")
    assert "_thumbnails" not in (tmp_path / "p.json").read_text()


def test_page_is_self_contained(failing_report, tmp_path):
    path = tmp_path / "parity.html"
    assert reports.write_html(failing_report, path) == []
    page = path.read_text()
    assert "<script" not in page and not re.search(r"(src|href)=['\"]?(https?:|//|file:)", page)
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    int8 = next(r for r in failing_report["candidates"] if r["precision"] == "int8")
    assert len(images) >= 2 + len(int8["disagreements"])  # summary, distribution, thumbnails
    for data in images:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    for row in failing_report["candidates"]:
        if row["status"] == "skipped":
            assert row["reason"].replace("'", "&#x27;") in page


def test_per_class_change_is_drawn_when_labels_are_there(labelled_report, tmp_path):
    per_class = labelled_report["reference"]["accuracy"]["per_class"]
    assert len(per_class) == 10 and all(0 <= v <= 1 for v in per_class if v is not None)
    picture, note = plots.class_changes(labelled_report)
    changed = any(
        abs(c - r) > 0 for row in labelled_report["candidates"]
        for c, r in zip(row["accuracy"]["per_class"], per_class) if c is not None and r is not None)
    assert (picture is not None) == changed and "classes" in note
    histogram = labelled_report["candidates"][0]["error_histogram"]
    assert sum(histogram["counts"]) + histogram["exact"] + histogram["nonfinite"] == 128


def _render(report, tmp_path):
    """The report's page as headless Chromium draws it (a screenshot) and its DOM."""
    path = tmp_path / "parity.html"
    reports.write_html(report, path)
    shot = tmp_path / "shot.png"
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(common + ["--window-size=1280,2400", f"--screenshot={shot}", "--dump-dom",
                                   path.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    return Image.open(shot).convert("RGB"), dom


def _colours(pixels):
    """How many distinct RGB colours an H x W x 3 picture has."""
    packed = pixels.astype(np.uint32)
    return len(np.unique((packed[..., 0] << 16) | (packed[..., 1] << 8) | packed[..., 2]))


@pytest.mark.browser
@needs_chromium
def test_chromium_renders_the_failing_report(failing_report, tmp_path):
    shot, dom = _render(failing_report, tmp_path)
    pixels = np.asarray(shot)
    assert shot.size == (1280, 2400)
    # not blank: many colours, and the red FAIL badge and green pass tags are drawn
    assert _colours(pixels) > 500
    red = ((pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)).sum()
    green = ((pixels[..., 1] > 100) & (pixels[..., 0] < 60) & (pixels[..., 2] < 90)).sum()
    assert red > 200 and green > 200
    # the numbers a reader looks for are text in the page, not only pixels in a picture
    assert re.search(r"id=\"verdict\"[^>]*>FAIL<", dom)
    for row in failing_report["candidates"]:
        if row["status"] == "ran":
            assert f"{row['metrics']['top1_agreement']:.2%}" in dom
            assert f"id=\"row-{row['backend']}-{row['precision']}\"" in dom
    assert "TensorRT is not installed" in dom and "top1_agreement_pct" in dom
    int8 = next(r for r in failing_report["candidates"] if r["precision"] == "int8")
    assert dom.count("<figure>") >= len(int8["disagreements"])


@pytest.mark.browser
@needs_chromium
def test_chromium_renders_the_labelled_report(labelled_report, tmp_path):
    shot, dom = _render(labelled_report, tmp_path)
    assert _colours(np.asarray(shot)) > 500
    top1 = labelled_report["reference"]["accuracy"]["top1"]
    assert re.search(rf"id=\"reference-top1\">{re.escape(f'{top1:.2%}')}<", dom)
    assert "Per-class accuracy change" in dom and "Machine and versions" in dom


def test_dollars_in_paths_and_class_names_print_as_text(labelled_report):
    """A data spec or class name with `$` in it is not a formula (matplotlib's mathtext would
    garble one and fail on an unbalanced one)."""
    from resnet_edge.parity import plots
    report = {**labelled_report, "data": {**labelled_report["data"], "spec": "imagefolder:/d/$x_{$/val"},
              "model": {**labelled_report["model"], "class_names": [f"$c_{{{i}$" for i in range(10)]}}
    report["candidates"] = [dict(r) for r in report["candidates"]]
    report["candidates"][0]["accuracy"] = {**report["candidates"][0]["accuracy"],
                                           "per_class": [0.0] * 10}  # every class changed
    for picture in (plots.summary(report), plots.error_distributions(report),
                    plots.class_changes(report)[0]):
        Image.open(io.BytesIO(picture)).verify()


def test_markdown_shows_specs_and_messages_as_text(labelled_report, tmp_path):
    """A data spec or a skip reason is not markup: rendered as CommonMark (markdown-it, rich's
    own Markdown parser), a spec holding HTML and a link stays text."""
    from markdown_it import MarkdownIt
    hostile = "imagefolder:/d/<img src=x onerror=alert(1)>/[click](javascript:alert(2))`|"
    report = {**labelled_report, "data": {**labelled_report["data"], "spec": hostile}}
    report["candidates"] = [*report["candidates"],
                            {"backend": "trt", "precision": "fp16", "status": "skipped",
                             "reason": "<script>alert(3)</script> | not installed"}]
    path = tmp_path / "p.md"
    reports.write_markdown(report, path)
    html = MarkdownIt("commonmark").enable("table").render(path.read_text())
    assert "<img" not in html.replace('<img src="p.png"', "") and "<script" not in html
    assert "href=" not in html  # no link made from the spec
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;script&gt;alert(3)" in html
    row = next(r for r in html.split("<tr>") if "trt fp16" in r)
    assert row.count("<td") == 9 and "| not installed" in row  # the | stays in its cell
    # and the source reads as text in a CI log: only what could open markup is escaped
    source = path.read_text()
    assert "imagefolder:/d/\\<img src=x onerror=alert(1)\\>/\\[click\\](javascript:alert(2))\\`\\|" in source
    for emphasis in ("*bold*", "_it_", "~~gone~~", "$x$"):
        assert f"<p>a {emphasis} b</p>" in MarkdownIt("commonmark").render(reports.md(f"a {emphasis} b"))


def test_every_picture_draws_log_ticks_as_powers_and_data_text_literally(labelled_report, tmp_path,
                                                                         monkeypatch):
    """Mathtext had been switched off for whole pictures to keep `$` in titles literal, and every
    log axis then printed raw `$\\mathdefault{10^{-6}}$` labels that ran into one another."""
    import matplotlib.figure
    from resnet_edge.train import plot_history
    drawn, ticks = [], []
    real = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        done = real(fig, *args, **kwargs)
        drawn.append(fig)
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
                if scale == "log":
                    ticks.append([(t.get_text(), t.get_window_extent(renderer).width)
                                  for t in axis.get_ticklabels() if t.get_text() and t.get_visible()])
        return done
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    report = {**labelled_report, "data": {**labelled_report["data"], "spec": "imagefolder:/d/$x_{$/val"}}
    plots.summary(report), plots.error_distributions(report), plots.class_changes(report)
    history = [{"epoch": e, "train_top1": 0.5, "val_top1": 0.5 + e / 10, "loss": 1 / e, "lr": 0.1 / e,
                "grad_norm": {"stem": 10.0 ** -e, "fc": 10.0 ** e}} for e in (1, 2, 3)]
    plot_history(history, tmp_path / "training.png", "resnet20 on imagefolder:/d/$a$b")
    assert len(ticks) >= 3 and all(ticks)  # the summary's errors, the distributions, gradient norms
    for axis in ticks:
        for text, width in axis:  # 10 with a raised exponent is narrow; the raw string is not
            assert width < 45, (text, width)
    titles = [fig._suptitle.get_text() for fig in drawn if fig._suptitle is not None]
    assert any(r"imagefolder:/d/\$x_{\$/val" in t for t in titles)
    assert any(r"imagefolder:/d/\$a\$b" in t for t in titles)


@pytest.mark.parametrize("ys", [[24.88, 25.04, 25.0], [100.0, 100.0], [0.0, 0.2], [60.0, 90.0]])
def test_the_accuracy_axis_never_magnifies_a_flat_result(ys):
    """Four rows at 24.88-25.04 % were drawn on a 0.2-point axis, as if worlds apart."""
    from resnet_edge.parity.plots import MIN_AXIS_PT, accuracy_axis
    bottom, top = accuracy_axis(ys)
    assert top - bottom >= MIN_AXIS_PT and 0.0 <= bottom <= min(ys) and max(ys) <= top <= 100.0
