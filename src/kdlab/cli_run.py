"""How the ``kdlab`` command ends: user errors as one red line and exit code 2, Ctrl-C as "interrupted" and exit
code 130, warnings as one yellow line, and the process group torn down under torchrun. Kept apart from the
commands (``kdlab.cli``), which stay a thin layer over the Python API."""

from __future__ import annotations

import functools
import sys

from rich.console import Console


def _one_line_warning(message, category, filename, lineno, file=None, line=None, *, width: int | None) -> None:
    """Warnings for the user (e.g. an overlapping split) as one yellow line, not Python's two-line format."""
    Console(stderr=True, width=width).print(f"[bold yellow]warning:[/] {message}", soft_wrap=True)


class Interrupted(BaseException):
    """Ctrl-C as kdlab's own exception: click turns a KeyboardInterrupt into "Aborted!" and exit code 1, while
    ``run_app`` reports this one as one line and exit code 130 (the shell's code for SIGINT). Like a
    KeyboardInterrupt it is no ``Exception``: every ``finally`` runs, so atomic writes leave no temporary file
    and the run directory's lock is released."""


def _interrupt(signum, frame) -> None:
    raise Interrupted()


def _os_error_line(err: OSError) -> str:
    """A failed read or write (a full disk, a read-only directory) as one line naming the file."""
    where = f" {err.filename}" if err.filename else ""
    reason = err.strerror or str(err) or type(err).__name__
    return f"cannot read or write{where}: {reason}"


def _error(message: str, width: int | None) -> None:
    from rich.text import Text

    line = Text.assemble(("error:", "bold red"), " ", message)  # a message's own [brackets] stay as they are
    Console(stderr=True, width=width).print(line, soft_wrap=True)


def run_app(app, width: int | None) -> None:
    """Run the typer ``app``: a user error becomes one red line and exit code 2 (Ctrl-C: "interrupted", exit code
    130), never a traceback; ``width`` is the console's, so error lines wrap like the tables."""
    import signal
    import threading
    import warnings

    from kdlab.errors import TrainingError  # light: --help must not import torch

    warnings.showwarning = functools.partial(_one_line_warning, width=width)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _interrupt) if main_thread else None
    finished = False
    try:
        app()
        finished = True
    except SystemExit as done:  # click ends every command with sys.exit
        finished = done.code in (0, None)
        raise
    except (ValueError, FileNotFoundError, TrainingError) as err:
        _error(str(err), width)
        sys.exit(2)
    except OSError as err:
        _error(_os_error_line(err), width)
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up below
        _error("interrupted", width)
        sys.exit(130)
    finally:  # under torchrun: tear the process group down before exit (kdlab.engine.end_process_group)
        if main_thread:  # main() called in-process (tests, scripts) leaves Ctrl-C as it found it
            signal.signal(signal.SIGINT, previous)
        if "torch" in sys.modules:  # nothing imported torch (e.g. --help): no process group can exist
            from kdlab.engine.processes import end_process_group

            end_process_group(wait=finished)
