"""The ``kdlab`` command (typer + rich): a thin layer over the Python API (``kdlab.engine``)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

import kdlab

app = typer.Typer(
    help="kdlab: knowledge distillation for PyTorch, with exact losses and honest benchmarks.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(width=None if sys.stdout.isatty() else 120)  # logs and pipes get the whole table


def _main_process() -> bool:
    """Under torchrun/accelerate launch only rank 0 prints tables."""
    import os

    return os.environ.get("RANK", "0") == "0"


CONFIG = typer.Argument(..., help="YAML run configuration.", show_default=False)
SET = typer.Option(None, "--set", help="Override a config value: --set train.epochs=3 (repeatable).")
RESUME = typer.Option(False, "--resume", help="Continue the run in `out` from its last checkpoint.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing run directory.")
EXTEND = typer.Option(
    False, "--extend", help="Train a finished run on to a larger train.epochs (keeps it in finished-epoch-N/)."
)
TRUST = typer.Option(
    False,
    "--trust-remote-code",
    help="Let a config's model 'package.module:callable' run code from outside your project (see SECURITY).",
)


def _finished_line(summary: dict) -> None:
    """A finished run that --resume found: say so (nothing was trained or written)."""
    from kdlab.api import FINISHED

    if summary.get(FINISHED):
        console.print(
            f"run directory {summary[FINISHED]} is already finished (train.epochs={summary.get('epochs')}); nothing "
            "done (--extend with a larger train.epochs trains on, --overwrite starts again)"
        )


def _version(value: bool) -> None:
    if value:
        console.print(f"kdlab {kdlab.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """kdlab: knowledge distillation for PyTorch."""


def _tables():
    """``kdlab.eval.tables``, imported when a command prints (``kdlab --help`` stays light)."""
    from kdlab.eval import tables

    return tables


def _print_task_line(summary: dict) -> None:
    """The task's own numbers that the classification table has no column for (a language model's perplexity)."""
    from kdlab.api import summary_line

    line = summary_line(summary)
    if line:
        console.print(line)


@app.command("losses")
def losses_command(
    example: bool = typer.Option(False, "--example", help="Also run the proxy-teacher worked example."),
) -> None:
    """List the registered losses and their hyper-parameters."""
    from kdlab.cli_listing import losses_table

    console.print(losses_table())
    if example:
        from kdlab.demo import run_loss_demo

        run_loss_demo(console)


@app.command("methods")
def methods_command() -> None:
    """List the registered distillation methods, the tasks each supports and their hyper-parameters."""
    from kdlab.cli_listing import methods_table

    console.print(methods_table())


@app.command("train")
def train_command(
    config: Path = CONFIG,
    set_: list[str] = SET,
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
    extend: bool = EXTEND,
    trust_remote_code: bool = TRUST,
):
    """Train a model with cross-entropy (e.g. a teacher)."""
    _train_or_distill(False, config, set_, resume, overwrite, extend, trust_remote_code)


@app.command("distill")
def distill_command(
    config: Path = CONFIG,
    set_: list[str] = SET,
    resume: bool = RESUME,
    overwrite: bool = OVERWRITE,
    extend: bool = EXTEND,
    trust_remote_code: bool = TRUST,
):
    """Distil a student from a teacher with the config's method."""
    _train_or_distill(True, config, set_, resume, overwrite, extend, trust_remote_code)


def _train_or_distill(
    distilling: bool, config: Path, set_: list[str], resume: bool, overwrite: bool, extend: bool, trust: bool
) -> None:
    from kdlab import api

    command = api.distill if distilling else api.train
    summary = command(config, set_, resume=resume, overwrite=overwrite, extend=extend, trust_remote_code=trust)
    if _main_process():
        _finished_line(summary)
        title = f"{'distilled' if distilling else 'trained'}: {summary['name']}"
        console.print(_tables().summary_table([summary], title))
        _print_task_line(summary)


@app.command("rl")
def rl_command(config: Path = CONFIG, set_: list[str] = SET, resume: bool = RESUME, overwrite: bool = OVERWRITE):
    """Reinforcement learning (task: rl): one PPO learner, dual policy distillation, or policy distillation."""
    from kdlab.tasks.rl import run_config

    summary = run_config(config, set_, resume=resume, overwrite=overwrite)
    if summary.get("finished_before"):
        console.print(f"run directory {summary['finished_before']} is already finished; nothing done (--overwrite)")
    _print_task_line(summary)


@app.command("cooperate")
def cooperate_command(
    config: Path = CONFIG, set_: list[str] = SET, overwrite: bool = OVERWRITE, trust_remote_code: bool = TRUST
):
    """Cooperative distillation: learners of any kind (trees, kNN, networks) teach each other (task: cooperative)."""
    from kdlab.api import cooperative

    summary = cooperative(config, set_, overwrite=overwrite, trust_remote_code=trust_remote_code)
    if _main_process():
        console.print(f"cooperative run written to {summary.get('out', '')}")
        _print_task_line(summary)


@app.command("cache-logits")
def cache_logits_command(config: Path = CONFIG, set_: list[str] = SET, trust_remote_code: bool = TRUST):
    """Run the teacher once over the data and store its logits for later distillation runs."""
    from kdlab.api import cache_logits, describe_cache
    from kdlab.config import load_config

    path = cache_logits(config, set_, trust_remote_code=trust_remote_code)
    console.print(f"teacher logits cached in {path}")
    line = describe_cache(load_config(config, set_), path)
    if line:
        console.print(line)


@app.command("select-ptloss")
def select_ptloss_command(
    config: Path = CONFIG,
    set_: list[str] = SET,
    output: Path = typer.Option(None, help="Where the JSON and PNG go (default: <out>-ptloss-selection/)."),
    top: int = typer.Option(10, min=1, help="Rows of the table."),
    trust_remote_code: bool = TRUST,
):
    """Choose PTLoss's epsilon through the proxy teacher on the validation split (no student training)."""
    from kdlab.api import select_ptloss

    selection, out = select_ptloss(config, set_, output, trust_remote_code=trust_remote_code)
    table = Table(title=f"PTLoss epsilon candidates, best first (score: {selection.metric}, T={selection.temperature})")
    for column in ("rank", "#", "epsilon", "L2", "TV", "NLL", "ECE", "acc"):
        table.add_column(column, justify="left" if column == "epsilon" else "right")
    for rank, i in enumerate(selection.ranked()[:top], start=1):
        s = selection.scores[i]
        eps = selection.candidates[i]
        shown = ", ".join(f"{x:+.3f}" for x in eps.tolist()) if eps.dim() == 1 else f"per-class {tuple(eps.shape)}"
        name = f"{i}" + (" (KD)" if i == 0 else "")
        table.add_row(str(rank), name, shown, *(f"{s[k]:.4f}" for k in ("l2", "tv", "nll", "ece", "accuracy")))
    if _main_process():
        console.print(table)
        kd_rank = selection.ranked().index(0) + 1
        console.print(
            f"chosen: candidate {selection.index}; plain KD (eps = 0) ranks {kd_rank} of "
            f"{len(selection.scores)}. Written: {out / 'ptloss_selection.json'}, {out / 'ptloss_selection.png'}"
        )


@app.command("chain")
def chain_command(
    config: Path = typer.Argument(..., help="YAML chain: out, base, stages.", show_default=False),
    set_: list[str] = SET,
    overwrite: bool = typer.Option(False, "--overwrite", help="Re-run every stage."),
    trust_remote_code: bool = TRUST,
):
    """Distil through a sequence of models (teacher → assistant(s) → student); finished stages are skipped."""
    from kdlab.api import model_imports
    from kdlab.workflow.chain import chain

    def announce(index: int, cfg, action: str) -> None:
        verb = {"skip": "finished before, skipped", "resume": "resuming", "fresh": "running", "overwrite": "re-running"}
        console.print(f"[bold]stage {index + 1}[/] {cfg.name} → {cfg.out}: {verb[action]}")

    with model_imports(config, trust_remote_code):
        summaries = chain(config, set_, overwrite=overwrite, on_stage=announce)
    console.print(_tables().summary_table(summaries, f"chain: {Path(summaries[-1]['out']).parent}"))


@app.command("sweep")
def sweep_command(
    config: Path = CONFIG,
    grid: list[str] = typer.Option(..., "--grid", help="key.sub=v1,v2,... (repeatable; the cartesian product)."),
    set_: list[str] = SET,
    jobs: int = typer.Option(1, "--jobs", help="Runs in parallel (separate processes)."),
    out: Path = typer.Option(None, "--out", help="Where the runs go (default: <config out>-sweep)."),
    overwrite: bool = OVERWRITE,
    trust_remote_code: bool = TRUST,
):
    """Run a grid of configs, one run directory each, then one table and plot; finished runs are skipped."""
    from kdlab.api import model_imports
    from kdlab.workflow.sweep import parse_grid, sweep

    with model_imports(config, trust_remote_code):
        result = sweep(config, parse_grid(grid), set_, root=out, jobs=jobs, overwrite=overwrite)
    rows = [{**p.summary, "name": p.name} for p in result.points if p.summary is not None]
    console.print(_tables().summary_table(rows, f"sweep: {result.root}"))
    console.print("written: " + ", ".join(str(path) for path in result.files.values()))


@app.command("evaluate")
def evaluate_command(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    no_latency: bool = typer.Option(False, "--no-latency", help="Skip the CPU latency measurement."),
    trust_remote_code: bool = TRUST,
    pid: bool | None = typer.Option(
        None, "--pid/--no-pid", help="Red/Uni/Syn of a feature run on test: with intervals / none (docs/rid.md)."
    ),
):
    """Metrics of a finished run on train, val and test (accuracy, NLL, ECE, fidelity to the teacher) and its
    footprint (bytes on disk, parameters, non-zeros, CPU latency at batch 1 and 256); written into its
    summary.json (under "evaluation") and evaluation.json, plots into RUN_DIR/plots/."""
    import kdlab.compress  # noqa: F401  (int8 runs load through the format it registers)
    from kdlab.api import evaluate
    from kdlab.eval.plots import write_run_plots
    from kdlab.eval.report import load_run

    result = evaluate(run_dir, latency=not no_latency, trust_remote_code=trust_remote_code)
    console.print(_tables().evaluation_table(result, f"evaluation of {run_dir}"))
    console.print(_tables().footprint_line(result["footprint"]))
    for line in _tables().predictor_lines(result):
        console.print(line)
    run = load_run(run_dir)
    written = write_run_plots(run_dir / "plots", run.records, result, run.pid)
    console.print(f"plots: {', '.join(str(p) for p in written)}")
    from kdlab.tasks.classify_pid import pid_lines

    for line in pid_lines(run_dir, estimate=pid):  # pid.jsonl's last epoch; a test estimate (quick by default)
        console.print(line)


@app.command("report")
def report_command(
    run_dirs: list[Path] = typer.Argument(..., help="Finished run directories.", show_default=False),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="The HTML file to write."),
    title: str = typer.Option("kdlab report", help="Heading of the report."),
    reevaluate: bool = typer.Option(False, "--reevaluate", help="Run `evaluate` again even where it was run."),
    trust_remote_code: bool = TRUST,
):
    """One self-contained HTML file comparing runs: configs, a table and plots (runs `evaluate` where needed)."""
    import kdlab.compress  # noqa: F401  (int8 runs load through the format it registers)
    from kdlab.api import evaluate
    from kdlab.eval.report import load_run, write_report

    for run_dir in run_dirs:  # check every directory first: a bad one leaves nothing written
        load_run(run_dir)
    for run_dir in run_dirs:
        if reevaluate or "evaluation" not in load_run(run_dir).summary:
            console.print(f"evaluating {run_dir} ...")
            evaluate(run_dir, trust_remote_code=trust_remote_code)
    path = write_report(run_dirs, output, title)
    console.print(_tables().summary_table([load_run(d).summary for d in run_dirs], title))
    console.print(f"report written to {path} ({path.stat().st_size / 1024:.0f} KiB)")


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("runs/demo"), help="Where the demo's runs go (replaced on each demo)."),
) -> None:
    """Train a teacher and CE, KD and PTLoss students on the embedded digits data; print the comparison."""
    from kdlab.demo import run_demo

    rows = run_demo(out, console)
    console.print(_tables().summary_table(rows, "kdlab demo: scikit-learn digits, test split"))


@app.command("compress")
def compress_command(
    config: Path = CONFIG, set_: list[str] = SET, overwrite: bool = OVERWRITE, trust_remote_code: bool = TRUST
):
    """Prune a finished run's model (compress.source) and recover it with the config's method (ce = fine-tune)."""
    from kdlab.api import model_imports
    from kdlab.compress.recover import compress

    with model_imports(config, trust_remote_code):
        summary = compress(config, set_, overwrite=overwrite)
    if _main_process():
        console.print(_tables().summary_table([summary], f"compressed: {summary['name']}"))
        info = summary["compress"]
        for step in info.get("steps", []):
            shape = next((key for key in ("hidden", "channels") if key in step), None)
            pruned = (
                f"{shape} {step[shape]} (units removed: {step['target_sparsity']:.3f})"
                if shape
                else f"weight sparsity {step['sparsity']:.3f} (target {step['target_sparsity']:.3f})"
            )
            console.print(
                f"step {step['step']}: {pruned}, "
                f"{step['parameters']} parameters, {step['nonzero_parameters']} non-zero, "
                f"{step['macs']} MACs, test acc {step['test_accuracy']:.4f}"
            )
        if "before" in info:
            source_acc = info["source_test_accuracy"]
            shown = "-" if source_acc is None else f"{source_acc:.4f}"
            console.print(f"source {info['source']}: {info['before']['parameters']} parameters, test acc {shown}")
        if "quantize" in info:
            console.print(_tables().quantize_line(info["quantize"]))


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="A finished run directory (float, pruned or int8).", show_default=False),
    output: Path = typer.Option(None, "-o", "--output", help="The ONNX file (default: RUN_DIR/model.onnx)."),
    float_: bool = typer.Option(False, "--float", help="A quantized run's float weights, not its int8 model."),
    trust_remote_code: bool = TRUST,
):
    """Export a run's model to ONNX (variable batch) and check it against the torch model on the run's test data."""
    from kdlab.api import model_imports
    from kdlab.compress.export import export_run

    with model_imports(run_dir / "config.yaml", trust_remote_code):
        report = export_run(run_dir, output, float_model=float_)
    console.print(
        f"exported {report['path']} ({report['file_bytes']:,} bytes, {report['kind']}); onnxruntime vs torch on "
        f"{report['rows']} test inputs: argmax agreement {report['agreement']:.4f}, "
        f"max |logit diff| {report['max_abs_diff']:.2e}, test acc {report['onnx_test_accuracy']:.4f}"
    )
    console.print(f"the ONNX file contains {report['contains']}")
    if "onnx_latency_ms" in report:
        timings = ", ".join(f"batch {k.split('_')[1]} {v:.3f} ms" for k, v in report["onnx_latency_ms"].items())
        console.print(f"onnxruntime CPU latency (median, {report['threads']} threads): {timings}")


def main() -> None:
    """Entry point: a user error becomes one red line and exit code 2 (Ctrl-C: "interrupted", exit code 130),
    never a traceback (``kdlab.cli_run``)."""
    from kdlab.cli_run import run_app

    run_app(app, console.width)


if __name__ == "__main__":
    main()
