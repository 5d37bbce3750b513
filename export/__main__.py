"""python -m export {prepare,train,controls,teacher,distill,export,verify,sample,fixtures,evaluate,bench,loadtest,blind,plot,all} --config C --workdir W.

Progress bars go to stderr, and only when it is a terminal (--no-progress: never)."""
import argparse
import json
import os
import sys
from pathlib import Path

from . import config as config_mod, progress
from .errors import ExportError

DEFAULT_CONFIG = "export/configs/default.json"


def _paths(workdir):
    w = Path(workdir)
    return {"data": w / "data", "train": w / "train", "controls": w / "controls", "teacher": w / "teacher",
            "model": w / "model"}


def cmd_prepare(args, cfg):
    from .data import prepare

    print(json.dumps(prepare(cfg, _paths(args.workdir)["data"]), indent=2))


def cmd_train(args, cfg):
    from .train import train

    p = _paths(args.workdir)
    record = train(cfg, p["data"], p["train"], resume=args.resume, device=getattr(args, "device", "auto"))
    if os.environ.get("RANK", "0") == "0":  # torchrun: one line, from rank 0
        print(json.dumps(record))


def cmd_controls(args, cfg):
    from .train_controls import train_controls
    from .train_tree import train_tree

    p = _paths(args.workdir)
    if args.only not in (None, "tree"):
        raise ExportError(f"controls --only {args.only}: allowed: tree (the others train together)")
    if args.only is None:
        print(json.dumps(train_controls(cfg, p["data"], p["train"], p["controls"])))
    print(json.dumps(train_tree(cfg, p["data"], p["train"], p["controls"])))


def cmd_teacher(args, cfg):
    from .teacher import train_teacher

    p = _paths(args.workdir)
    print(json.dumps(train_teacher(cfg, p["data"], p["teacher"])))


def cmd_distill(args, cfg):
    from .distill import distill

    p = _paths(args.workdir)
    print(json.dumps(distill(cfg, p["data"], p["teacher"]), indent=2))


def cmd_add_control(args, cfg):
    from .add_control import add_controls

    p = _paths(args.workdir)
    only = [c for c in args.only.split(",") if c]
    add_controls(Path(args.out), p["controls"], cfg.controls.guide_batches, only,
                 command=" ".join(["python -m export"] + sys.argv[1:]))


def cmd_refresh_denoiser(args, cfg):
    from .add_control import refresh_denoiser

    refresh_denoiser(Path(args.out), command=" ".join(["python -m export"] + sys.argv[1:]))


def cmd_export(args, cfg):
    from .onnx_export import export_model
    from .verify import verify_model_dir

    p = _paths(args.workdir)
    out = Path(args.out) if args.out else p["model"]
    export_model(p["data"], p["train"], out, command=" ".join(["python -m export"] + sys.argv[1:]),
                 controls_dir=p["controls"], teacher_dir=p["teacher"], guide_batches=cfg.controls.guide_batches)
    print(json.dumps(verify_model_dir(out), indent=2))


def cmd_verify(args, cfg):
    from .verify import verify_model_dir

    p = _paths(args.workdir)
    print(json.dumps(verify_model_dir(Path(args.out) if args.out else p["model"]), indent=2))


def cmd_sample(args, cfg):
    from .sample import sample_texts

    p = _paths(args.workdir)
    model_dir = Path(args.out) if args.out else p["model"]
    for text in sample_texts(model_dir, num=args.num, steps=args.steps, seed=args.seed, eta=args.eta,
                             ddpm=not args.ddim, clamp=not args.no_clamp):
        print(text)


def cmd_fixtures(args, cfg):
    from .fixtures import write_fixtures

    print("\n".join(write_fixtures(args.model, args.out_dir, seed=args.seed)))


def cmd_evaluate(args, cfg):
    from .evaluate import QUICK, evaluate, sweep, table

    if args.quick:
        args.n, args.steps = QUICK["n"], QUICK["steps"]

    if args.budgets:
        budgets = [int(b) for b in args.budgets.split(",")]
        ks = [int(k) for k in args.guide_steps.split(",")] if args.guide_steps else [None]
        report, markdown = sweep(args.model, args.dlm, budgets, ks, n=args.n, seed=args.seed,
                                 judge=False if args.no_judge else None)
        print(markdown)
    else:
        k = int(args.guide_steps) if args.guide_steps else None
        only = args.only.split(",") if args.only else None
        try:
            request = json.loads(args.request) if args.request else {}
        except json.JSONDecodeError as e:
            raise ExportError(f"--request: not JSON ({e})") from None
        if not isinstance(request, dict):
            raise ExportError(f"--request: expected a JSON object of request fields, got {args.request}")
        report = evaluate(args.model, args.dlm, steps=args.steps, n=args.n, seed=args.seed, guide_steps=k, only=only,
                          request=request, judge=False if args.no_judge else None)
        print(table(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")


def cmd_bench(args, cfg):
    from .bench import bench, quality, quality_table, report

    result = bench(args.model, args.dlm, steps=args.steps, rounds=args.rounds, repeat=args.repeat,
                   warmup=args.warmup, batch=args.batch)
    print(report(result))
    if args.quality:
        budgets = [int(b) for b in args.budgets.split(",")]
        result["quality"] = quality(args.model, args.dlm, budgets, args.quality)
        print("\n" + quality_table(result["quality"]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")


def cmd_loadtest(args, cfg):
    from .loadtest import latency_table, loadtest, table, transport_latency

    if args.transports:
        report = transport_latency(args.model, args.dlm, requests=args.latency_requests, warmup=args.warmup,
                                   threads=args.threads)
        print(latency_table(report))
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
        return
    report = loadtest(args.model, args.dlm, clients=args.clients, per_client=args.requests, max_batch=args.max_batch,
                      threads=args.threads, repeat=args.repeat, rounds=args.rounds)
    print(table(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")


def cmd_blind(args, cfg):
    from . import blind

    if args.action == "make":
        sources = []
        for spec in args.source:
            label, sep, rest = spec.partition("=")
            path, control, count = (rest.rsplit(":", 2) + ["", ""])[:3] if sep else ("", "", "")
            if not (label and path and control and count.isdigit()):
                raise ExportError(f"--source {spec!r}: expected LABEL=REPORT.json:CONTROL:COUNT")
            sources.append((label, path, control, int(count)))
        print(json.dumps(blind.make(sources, args.out, seed=args.seed)))
    else:
        if not args.key or not args.grades:
            raise ExportError("blind score: give --key KEY.json and --grades FILE [FILE ...]")
        print(blind.markdown(blind.score(args.key, args.grades)))


def cmd_plot(args, cfg):
    from .plot import plot_quality, plot_train

    if bool(args.train) == bool(args.quality):
        raise ExportError("plot: give --train TRAIN_LOG.jsonl or --quality REPORT.json (one of them)")
    source = Path(args.train or args.quality)
    out = Path(args.out) if args.out else source.with_suffix(".svg")
    if args.train:
        plot_train(source, out, title=args.title, caption=args.caption)
    else:
        plot_quality(source, out, title=args.title, caption=args.caption)
    print(out)


def cmd_all(args, cfg):
    for step in (cmd_prepare, cmd_train, cmd_controls, cmd_teacher, cmd_export):
        step(args, cfg)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="pipeline config (JSON)")
    parser.add_argument("--workdir", default="build/e2e", help="where data, checkpoints and the model go")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they go to stderr, and only when it is a terminal)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="split the corpus, build tokenizer.json, tag UPOS")
    p = sub.add_parser("train", help="train the Diffusion-LM (checkpoints in WORKDIR/train)")
    p.add_argument("--resume", action="store_true", help="continue from WORKDIR/train/checkpoint.pt")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: CUDA when PyTorch sees a GPU (under torchrun: cuda:LOCAL_RANK, nccl), else the CPU (gloo)")
    p = sub.add_parser("controls", help="train the guidance classifiers (pos, content, spans, then tree) on noisy latents")
    p.add_argument("--only", help="tree: train only the tree classifier, into the existing controls.pt")
    sub.add_parser("teacher", help="train the autoregressive teacher LM (lm-score, distillation)")
    sub.add_parser("distill", help="sample the teacher into WORKDIR/data/distilled.jsonl (train.corpus distilled or mixed)")
    for name, help_ in (("export", "write the ONNX model directory, then verify it"),
                        ("verify", "parity of ONNX Runtime against PyTorch for a model directory")):
        q = sub.add_parser(name, help=help_)
        q.add_argument("--out", help="model directory (default WORKDIR/model)")
    a = sub.add_parser("add-control", help="export classifiers trained since (e.g. tree) into an exported model directory")
    a.add_argument("--out", required=True, help="the model directory, e.g. models/e2e")
    a.add_argument("--only", required=True, help="comma-separated controls to add from WORKDIR/controls/controls.pt")
    r = sub.add_parser("refresh-denoiser", help="export a model directory's denoiser graphs again from its reference.pt")
    r.add_argument("--out", required=True, help="the model directory, e.g. models/e2e")
    s = sub.add_parser("sample", help="PyTorch reference sampler")
    s.add_argument("--out", help="model directory (default WORKDIR/model)")
    s.add_argument("--num", type=int, default=10)
    s.add_argument("--steps", type=int, default=200)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--ddim", action="store_true", help="DDIM update instead of DDPM")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM eta (with --ddim)")
    s.add_argument("--no-clamp", action="store_true", help="disable the clamping trick")
    f = sub.add_parser("fixtures", help="golden files for the Rust tests from the reference sampler")
    f.add_argument("--model", default="models/e2e", help="model directory")
    f.add_argument("--out-dir", default="tests/fixtures")
    f.add_argument("--seed", type=int, default=0)
    e = sub.add_parser("evaluate", help="control success and fluency (SLOR) of the real dlm binary on held-out targets")
    e.add_argument("--model", default="models/e2e")
    e.add_argument("--dlm", default="target/release/dlm")
    e.add_argument("--steps", type=int, default=200)
    e.add_argument("--n", type=int, default=200, help="targets per control")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--quick", action="store_true", help="n = 50 at 50 steps (the ablation setting, a few minutes)")
    e.add_argument("--only", help="comma-separated controls to evaluate (default: all)")
    e.add_argument("--request", default="", help="extra fields for every request (JSON), e.g. "
                   "'{\"block_repeats\": false}' or '{\"guide_lr\": {\"spans\": 0.3}}'")
    e.add_argument("--no-judge", action="store_true", help="skip the pretrained fluency judge (no SLOR)")
    e.add_argument("--budgets", help="comma-separated step budgets: a sweep printed as a markdown table")
    e.add_argument("--guide-steps", help="K (comma-separated with --budgets); default: the manifest's")
    e.add_argument("--json-out", help="also write the report as JSON here")
    b = sub.add_parser("bench", help="dlm against the PyTorch reference and a Python onnxruntime loop")
    b.add_argument("--model", default="models/e2e")
    b.add_argument("--dlm", default="target/release/dlm")
    b.add_argument("--steps", type=int, default=50, help="step budget of the per-step measurements")
    b.add_argument("--rounds", type=int, default=3, help="engines alternate this many times")
    b.add_argument("--repeat", type=int, default=10, help="measured runs per engine and round")
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--batch", type=int, default=16, help="batch of the throughput comparison")
    b.add_argument("--quality", type=int, default=0, metavar="N",
                   help="also evaluate N targets per control at each of --budgets, next to latency")
    b.add_argument("--budgets", default="10,20,50,100,200")
    b.add_argument("--json-out", help="also write the results as JSON here")
    lt = sub.add_parser("loadtest", help="dlm serve under mixed concurrent load: batched against fifo")
    lt.add_argument("--model", default="models/e2e")
    lt.add_argument("--dlm", default="target/release/dlm")
    lt.add_argument("--clients", type=int, default=8)
    lt.add_argument("--requests", type=int, default=9, help="requests per client, sent back to back")
    lt.add_argument("--max-batch", type=int, default=16)
    lt.add_argument("--threads", type=int, default=0, help="dlm --threads")
    lt.add_argument("--repeat", type=int, default=5, help="requests per budget timed alone")
    lt.add_argument("--rounds", type=int, default=3, help="rounds, the schedules alternating")
    lt.add_argument("--json-out", help="also write the report as JSON here")
    lt.add_argument("--transports", action="store_true",
                    help="instead: 1-step latency over HTTP against the line protocol over TCP, one server")
    lt.add_argument("--latency-requests", type=int, default=300, help="--transports: timed requests per transport")
    lt.add_argument("--warmup", type=int, default=20, help="--transports: untimed requests per transport first")
    bl = sub.add_parser("blind", help="the blind reading: make a shuffled file of outputs and references; score grades")
    bl.add_argument("action", choices=["make", "score"])
    bl.add_argument("--source", action="append", default=[], help="make: LABEL=REPORT.json:CONTROL:COUNT (repeatable; "
                    "CONTROL references for the held-out references)")
    bl.add_argument("--out", default="blind", help="make: where sentences.txt, rubric.txt and key.json go")
    bl.add_argument("--seed", type=int, default=0)
    bl.add_argument("--key", help="score: the key.json of make")
    bl.add_argument("--grades", nargs="+", default=[], help="score: one grades file per reader (N<TAB>grade lines)")
    pl = sub.add_parser("plot", help="SVG charts: training curves of a train_log.jsonl, or control success, "
                        "fluency and ms per sentence by step budget from bench --quality / evaluate JSON")
    pl.add_argument("--train", metavar="TRAIN_LOG", help="a WORKDIR/train/train_log.jsonl: its loss terms by step")
    pl.add_argument("--quality", metavar="REPORT", help="bench --json-out (with --quality N) or evaluate --json-out "
                    "(one budget or a --budgets sweep)")
    pl.add_argument("--out", help="the SVG to write (default: the input with .svg)")
    pl.add_argument("--title", help="the chart's title (default: what the data is)")
    pl.add_argument("--caption", help="a line under the chart (e.g. where and when it was measured)")
    a = sub.add_parser("all", help="prepare, train, export and verify")
    a.add_argument("--resume", action="store_true")
    a.add_argument("--out", help="model directory (default WORKDIR/model)")
    args = parser.parse_args(argv)
    progress.show(not args.no_progress)
    try:
        cfg = config_mod.load(args.config)
        {"prepare": cmd_prepare, "train": cmd_train, "controls": cmd_controls, "teacher": cmd_teacher, "distill": cmd_distill, "export": cmd_export, "add-control": cmd_add_control, "refresh-denoiser": cmd_refresh_denoiser, "verify": cmd_verify,
         "sample": cmd_sample, "fixtures": cmd_fixtures, "evaluate": cmd_evaluate, "bench": cmd_bench, "loadtest": cmd_loadtest,
         "blind": cmd_blind, "plot": cmd_plot, "all": cmd_all}[args.command](args, cfg)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
