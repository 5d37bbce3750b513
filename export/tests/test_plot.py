"""python -m export plot on small made-up reports and logs, and on the log of a real tiny training run:
the SVG is written and names its series (no pixel comparisons)."""
import json
import xml.etree.ElementTree as ET

import pytest

from export.__main__ import main
from export.errors import ExportError
from export.plot import plot_quality, plot_train, quality_points, read_train_log


def texts(svg):
    """Every text of the SVG (matplotlib keeps text as <text> with svg.fonttype none)."""
    root = ET.parse(svg).getroot()
    return [" ".join("".join(e.itertext()).split()) for e in root.iter() if e.tag.endswith("text")]


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def step(n, loss):
    return {"step": n, "loss_ema": loss, "loss": loss * 1.1, "mse": loss / 2, "nll": loss / 3, "elapsed_s": n / 10}


def test_training_curves_name_every_term(tmp_path):
    log = write_lines(tmp_path / "train_log.jsonl",
                      [{"event": "start", "parameters": 1234567, "processes": 1, "global_batch": 64}]
                      + [step(n, 1.0 / n) for n in (10, 20, 30)])
    out = plot_train(log, tmp_path / "train.svg")
    found = texts(out)
    for name in ("loss_ema (running mean)", "loss", "mse", "nll", "training step"):
        assert name in found, (name, found)
    assert any("1,234,567 parameters" in t and "global batch 64" in t for t in found), found
    assert b"<dc:date>" not in out.read_bytes()  # no date: the same log draws the same file
    assert plot_train(log, tmp_path / "again.svg").read_bytes() == out.read_bytes()


def test_a_log_started_again_draws_each_run_apart(tmp_path):
    log = write_lines(tmp_path / "log.jsonl", [{"event": "start"}, step(10, 1.0), step(20, 0.5),
                                               {"event": "start"}, step(10, 0.9)])
    runs, start = read_train_log(log)
    assert [[r["step"] for r in run] for run in runs] == [[10, 20], [10]] and start == {"event": "start"}
    found = texts(plot_train(log, tmp_path / "runs.svg"))
    assert {"mse, run 1", "mse, run 2"} <= set(found), found


@pytest.mark.parametrize("lines, needle", [
    (['{"step": 10, "loss": 1.0}', "{not json"], ":2: not JSON"),
    (['{"event": "start"}'], "no step records yet"),
    (['{"loss": 1.0}'], "'step' must be a count"),
    (['{"step": 10, "loss": "low"}'], "['loss'] not numbers"),
    (['{"event": "resume"}'], "unknown event 'resume'"),
    (["[1, 2]"], ":1: expected a JSON object"),
])
def test_a_bad_log_is_named_with_its_line(tmp_path, lines, needle):
    log = tmp_path / "bad.jsonl"
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(ExportError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        plot_train(log, tmp_path / "bad.svg")
    assert not (tmp_path / "bad.svg").exists()


def bench_report(budgets=(10, 50, 200)):
    rows = [{"steps": b, "guide_steps": 3, "n": 20, "ms_per_sentence": {"none": 0.6 * b, "pos": 1.5 * b},
             "success": {"pos": 0.5 + b / 500, "content": 0.4, "spans": 0.3, "length": 1.0, "infill": 1.0},
             "slor": {"pos": -0.3, "content": 0.1, "spans": None, "length": -0.2, "infill": -0.2, "none": -0.2,
                      "references": 0.5}} for b in budgets]
    return {"steps": 50, "medians": {}, "quality": rows}


def test_quality_from_bench_rows_names_controls_timings_and_budgets(tmp_path):
    report = tmp_path / "bench.json"
    report.write_text(json.dumps(bench_report()))
    out = plot_quality(report, tmp_path / "quality.svg", caption="made up for the test")
    found = texts(out)
    for name in ("pos", "content", "spans", "length", "infill", "references", "unguided", "pos-guided, K = 3",
                 "10", "50", "200", "made up for the test", "denoising steps (budget)"):
        assert name in found, (name, found)
    points, timing = quality_points(report)
    assert "spans" not in points[0]["slor"] and "alone" in timing  # a missing SLOR is left out, not drawn as 0


def test_quality_from_an_evaluate_sweep_draws_a_line_per_guidance_k(tmp_path):
    def report(steps, k):
        res = {"pos": {"n": 4, "success": 0.5, "slor": -0.3, "seconds_per_sentence": 0.01 * steps},
               "none": {"n": 4, "slor": -0.2, "seconds_per_sentence": 0.005 * steps},
               "references": {"n": 4, "slor": 0.4}}
        return {"steps": steps, "guide_steps": k, "seed": 0, "request": {}, "results": res}

    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps([report(s, k) for s in (10, 20) for k in (1, 3)]))
    found = texts(plot_quality(sweep, tmp_path / "sweep.svg"))
    assert {"pos, K = 1", "pos, K = 3", "none, K = 1", "references, K = 3"} <= set(found), found
    assert "none" not in quality_points(sweep)[0][0]["success"]  # unconditional output has no success


@pytest.mark.parametrize("doc, needle", [
    ({"steps": 50, "quality": "| steps | ... |"}, "not the rows of bench --quality"),
    ({"steps": 50}, "has no \\['guide_steps', 'results'\\]"),
    ([], "expected bench --json-out"),
    ({"steps": 0, "guide_steps": 3, "results": {}}, "steps must be a budget >= 1"),
    ({"steps": 10, "guide_steps": 3, "results": {"pos": {"success": "high"}}}, "no finite numbers"),
])
def test_a_report_of_another_shape_is_refused_with_what_is_expected(tmp_path, doc, needle):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ExportError, match=needle):
        plot_quality(path, tmp_path / "r.svg")


def test_the_command_line_writes_the_svg_and_refuses_unclear_asks(tmp_path, capsys):
    report = tmp_path / "bench.json"
    report.write_text(json.dumps(bench_report((10, 20))))
    assert main(["--no-progress", "plot", "--quality", str(report)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "bench.svg")
    assert "pos-guided, K = 3" in texts(tmp_path / "bench.svg")
    assert main(["plot"]) == 1
    assert "give --train TRAIN_LOG.jsonl or --quality REPORT.json" in capsys.readouterr().err
    assert main(["plot", "--quality", str(report), "--out", str(tmp_path / "q.png")]) == 1
    assert "the chart is SVG" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["plot", "--quality", str(report), "--out", str(tmp_path / "file" / "q.svg")]) == 1
    assert "cannot write the chart" in capsys.readouterr().err
    assert main(["plot", "--train", str(tmp_path / "missing.jsonl")]) == 1
    assert "training log (WORKDIR/train/train_log.jsonl" in capsys.readouterr().err


def test_the_log_of_a_real_tiny_training_run(tiny_workdir, tmp_path):
    log = tiny_workdir / "train" / "train_log.jsonl"
    runs, start = read_train_log(log)
    assert start["event"] == "start" and len(runs) == 1 and len(runs[0]) >= 2
    found = texts(plot_train(log, tmp_path / "tiny.svg"))
    terms = [k for k in runs[0][0] if k not in ("step", "elapsed_s", "loss", "loss_ema")]
    assert terms and all(t in found for t in terms), (terms, found)
    assert f"{start['parameters']:,} parameters" in " ".join(found)
