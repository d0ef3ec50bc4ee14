"""`kdlab report`: one self-contained HTML file, checked structurally with html.parser; plots on their own."""

from __future__ import annotations

import base64
import json
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdlab.api import distill, train
from kdlab.cli import app, main
from kdlab.eval import plots

FAST = {"progress": False, "batch_size": 64, "optimizer": {"lr": 0.05}}


pytestmark = pytest.mark.usefixtures("one_thread")


class Structure(HTMLParser):
    """Collects what the test checks: comparison-table rows, images, links, scripts, headings."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self.scripts = 0
        self.h2: list[str] = []
        self._in_cmp = self._in_body = self._in_td = self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("class") == "cmp":
            self._in_cmp = True
        elif tag == "tbody" and self._in_cmp:
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "td" and self._in_body:
            self._in_td = True
            self.rows[-1].append("")
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "script":
            self.scripts += 1
        elif tag == "h2":
            self._in_h2 = True
            self.h2.append("")
        for name in ("href", "src"):
            if str(attrs.get(name, "")).startswith(("http:", "https:", "//")):
                self.external.append(attrs[name])

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_cmp = self._in_body = False
        elif tag == "td":
            self._in_td = False
        elif tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_td:
            self.rows[-1][-1] += data
        if self._in_h2:
            self.h2[-1] += data


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("report")
    base = {"data": {"name": "digits"}, "model": {"name": "mlp", "kwargs": {"hidden": [16]}}}
    train({**base, "name": "teacher", "out": str(root / "teacher"), "train": {**FAST, "epochs": 2}})
    kd = {"name": "kd", "alpha": 0.0, "beta": 1.0}
    distill(
        {
            **base,
            "name": "student-kd",
            "out": str(root / "kd"),
            "teacher": {"run": str(root / "teacher")},
            "method": kd,
            "train": {**FAST, "epochs": 2},
        }
    )
    return [root / "teacher", root / "kd"]


def test_report_is_one_self_contained_html_file(tmp_path, runs):
    out = tmp_path / "report.html"
    done = CliRunner().invoke(app, ["report", *map(str, runs), "-o", str(out), "--title", "two runs"])
    assert done.exit_code == 0, done.output[-2000:]
    page = Structure()
    page.feed(out.read_text())
    # one comparison row per run, in order, with the test accuracy of its summary
    assert [r[0] for r in page.rows] == ["teacher", "student-kd"]
    for row, run in zip(page.rows, runs, strict=True):
        summary = json.loads((run / "summary.json").read_text())
        assert f"{summary['evaluation']['test']['accuracy']:.4f}" in row
    assert page.rows[0][7] == "-" and page.rows[1][7] != "-"  # agreement only for the distilled run
    # every plot embedded as a PNG data URI; nothing fetched from the network, no scripts
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    for src in page.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # fidelity overview + per run: curves, reliability, confusion (2 runs x 3)
    assert len(page.images) == 1 + 2 * 3
    assert page.external == [] and page.scripts == 0
    assert page.h2 == ["Comparison", "teacher", "student-kd"]
    assert "two runs" in done.output and "report written" in done.output


def test_evaluate_prints_train_val_and_test(runs):
    done = CliRunner().invoke(app, ["evaluate", str(runs[1])])
    assert done.exit_code == 0, done.output[-2000:]
    evaluation = json.loads((runs[1] / "summary.json").read_text())["evaluation"]
    rows = {line.split()[0]: line.split()[1:] for line in done.output.splitlines() if line.strip()[:5] in SPLITS}
    assert set(rows) == {"train", "val", "test"}
    for split, cells in rows.items():  # columns: acc, NLL, ECE, agree, KL, teacher acc
        assert cells[0] == f"{evaluation[split]['accuracy']:.4f}"
        assert cells[3] == f"{evaluation[split]['agreement']:.4f}"
    for name in ("learning_curves", "reliability", "confusion"):
        assert (runs[1] / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


SPLITS = ("train", "val  ", "test ")


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path, runs, monkeypatch, capsys):
    out = tmp_path / "r.html"
    monkeypatch.setattr(sys, "argv", ["kdlab", "report", str(runs[0]), str(tmp_path), "-o", str(out)])
    with pytest.raises(SystemExit) as exited:
        main()  # the console script's entry point, in process
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "not a finished kdlab run directory" in lines[0]
    assert not out.exists()


def test_plots_draw_what_the_data_says(tmp_path):
    records = [
        {"epoch": e, "train/kd": 1.0 / e, "val/accuracy": 0.5 + e / 10, "val/agreement": 0.6, "val/kl_teacher": 0.1}
        for e in (1, 2, 3)
    ]
    fig = plots.learning_curves_figure(records)
    assert len(fig.axes) == 4  # loss, accuracy, agreement, KL
    assert list(fig.axes[1].lines[0].get_ydata()) == pytest.approx([0.6, 0.7, 0.8])
    no_teacher = plots.learning_curves_figure([{"epoch": 1, "train/ce": 1.0, "val/accuracy": 0.5}])
    assert len(no_teacher.axes) == 2
    curve = {"confidence": [float("nan"), 0.7], "accuracy": [float("nan"), 0.5], "count": [0, 3]}
    fig = plots.reliability_figure({"student": curve})
    assert list(fig.axes[0].collections[0].get_offsets()[0]) == pytest.approx([0.7, 0.5])
    fig = plots.confusion_figure({"m": [[3, 1], [0, 4]]}, {"m": ("teacher", "student")})
    assert "diagonal 0.875" in fig.axes[0].get_title()
    path = plots.save_png(fig, tmp_path / "c.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_the_teacher_is_named_so_and_not_ranked_among_the_students(tmp_path, runs):
    from kdlab.eval.report import _table, _teacher_runs, load_run, role

    data = [load_run(r) for r in runs]
    teachers = _teacher_runs(data)
    assert teachers == {runs[0].resolve()}
    assert [role(run, teachers) for run in data] == ["teacher", "student"]
    html_rows = _table(data).split("<tr>")[2:]  # after the header row
    assert len(html_rows) == 2
    assert 'class="best"' not in html_rows[0]  # the teacher is more accurate, and not a contender
    test = data[0].evaluation["test"]
    figure = plots.split_confusion_figure(test, role(data[0], teachers))
    assert figure.axes[0].get_title().startswith("teacher vs labels")
