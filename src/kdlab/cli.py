"""The ``kdlab`` command (typer + rich): a thin layer over the Python API."""

from __future__ import annotations

import inspect
import sys

import typer
from rich.console import Console
from rich.table import Table

import kdlab

app = typer.Typer(
    help="kdlab: knowledge distillation for PyTorch, with exact losses and honest benchmarks.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


def _version(value: bool) -> None:
    if value:
        console.print(f"kdlab {kdlab.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """kdlab: knowledge distillation for PyTorch."""


def _losses_table() -> Table:
    from kdlab import losses

    table = Table(title="Registered losses (kdlab.losses.get(name, **kwargs))")
    table.add_column("name", style="bold cyan")
    table.add_column("hyper-parameters (defaults)")
    table.add_column("needs")
    table.add_column("what it is")
    for name in losses.available():
        cls = losses.registry._REGISTRY[name]
        params = inspect.signature(cls.__init__).parameters.values()
        hyper = ", ".join(
            p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default}"
            for p in params
            if p.name not in ("self", "reduction")
        )
        needs = ", ".join(n for n, flag in (("teacher", cls.requires_teacher), ("labels", cls.requires_target)) if flag)
        table.add_row(name, hyper, needs, (cls.__doc__ or "").strip().splitlines()[0])
    return table


@app.command("losses")
def losses_command() -> None:
    """List the registered losses and their hyper-parameters."""
    console.print(_losses_table())


@app.command("demo")
def demo_command(
    seed: int = typer.Option(0, help="Random seed of the synthetic example."),
    candidates: int = typer.Option(64, min=1, help="Number of random epsilon candidates to score."),
) -> None:
    """Run the main demonstration on built-in synthetic data (no download)."""
    from kdlab.demo import run_loss_demo

    console.print(_losses_table())
    run_loss_demo(console, seed=seed, candidates=candidates)


def main() -> None:
    """Entry point: a user error becomes one red line and exit code 2, never a traceback."""
    try:
        app()
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[bold red]error:[/] {err}")
        sys.exit(2)


if __name__ == "__main__":
    main()
