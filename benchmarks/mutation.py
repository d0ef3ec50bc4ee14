"""`make mutation`: mutation testing of kdlab's core modules with mutmut 3, and its report.

Why it exists: a test suite that passes says little until a broken line makes it fail. mutmut copies ``src/`` into
``mutants/``, changes one operator, constant or argument at a time (a *mutant*) and runs only the tests that reach the
mutated function (recorded once through its trampolines). A mutant no test notices *survives*: a test is missing, or
the change cannot alter any result (an *equivalent* mutant, listed with its reason in ``mutation_notes.toml``).

    python benchmarks/mutation.py                    # every group, then benchmarks/results/mutation.md
    python benchmarks/mutation.py --modules losses   # one group (the other groups' last results stay in the report)
    python benchmarks/mutation.py --survivors        # after adding a test: rerun only the last survivors
    python benchmarks/mutation.py --report-only      # rewrite the report without running anything

``GROUPS`` below says which files each group mutates, which mutants it runs and which test files may kill them;
each group works in ``.mutation/<group>/`` with its own generated ``[tool.mutmut]`` configuration.
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"  # one mutmut working directory per group (git-ignored)
NOTES = ROOT / "benchmarks" / "mutation_notes.toml"
REPORT = ROOT / "benchmarks" / "results" / "mutation.md"
RUNS = ROOT / "benchmarks" / "results" / "mutation_runs.json"
# Lines never mutated, in every group: the text of an error or a warning is prose, not behaviour (the condition
# that raises it is on its own line and is mutated).
QUIET = [r"^\s*raise ", r"warnings\.warn\("]
# The loop group mutates only the lines of the normalisation: the batches of an epoch (the partial last one), the
# accumulation windows and what divides by them.
NORMALISATION = r"^(?!.*(window|objective|num_items|grad_accum|micro_steps|log_scale|\bsync\b|\brest\b|sizes|share))"
SLOW = [  # through mutmut's trampolines torch.compile takes minutes; a subprocess imports the unmutated package
    "--deselect=tests/test_losses_api.py::test_compiled_backend_matches_eager",
    "--deselect=tests/test_lm_cli.py::test_two_processes_train_the_same_lm_as_one",
    "--deselect=tests/test_lm_cli.py::test_kdlab_and_the_image_tasks_do_not_import_transformers",
    "--deselect=tests/test_ptloss_selection.py::test_distill_with_auto_epsilon_and_the_select_command",
]


@dataclass(frozen=True)
class Group:
    """Files mutated, mutant-name patterns run (mutmut names ``<module>.x_<function>__mutmut_<n>`` or
    ``<module>.xǁ<Class>ǁ<method>__mutmut_<n>``), the test files that may kill them, lines left alone."""

    files: list[str]
    patterns: list[str]
    tests: list[str]
    skip_lines: list[str] = field(default_factory=list)


GROUPS: dict[str, Group] = {
    "losses": Group(
        ["src/kdlab/losses/*.py"],
        ["kdlab.losses.*"],
        [
            "reference_values",
            "losses_api",
            "fused_linear",
            "sparse_tail",
            "sparse_teacher",
            "proxy_teacher",
            "proxy_teacher_bruteforce",
            "parameter_values",
            "mutation_kills_losses",
        ],
    ),
    "methods": Group(
        ["src/kdlab/methods/*.py"],
        ["kdlab.methods.*"],
        [
            "feature_methods",
            "schedules",
            "ptloss_selection",
            "parameter_values",
            "engine_pieces",
            "reference_values",
            "accumulation_windows",
            "engine",
            "mutation_kills_methods",
        ],
    ),
    "loop": Group(
        [
            "src/kdlab/engine/loop.py",
            "src/kdlab/engine/batches.py",
            "src/kdlab/engine/supervised.py",
            "src/kdlab/tasks/causal_lm.py",
        ],
        [
            "kdlab.engine.loop.x_run_loop__mutmut_*",
            "kdlab.engine.batches.x_batch_sizes__mutmut_*",
            "kdlab.engine.batches.x_batch_indices__mutmut_*",
            "kdlab.engine.supervised.xǁClassifyStepǁobjective__mutmut_*",
            "kdlab.tasks.causal_lm.xǁLMStepǁobjective__mutmut_*",
            "kdlab.tasks.causal_lm.xǁLMStepǁbatch__mutmut_*",
        ],
        ["accumulation_windows", "data_options", "engine", "engine_pieces", "lm_cli", "mutation_kills_loop"],
        [NORMALISATION],
    ),
    "splits": Group(
        ["src/kdlab/data/splits.py"],
        ["kdlab.data.splits.*"],
        ["data_splits", "split_leakage", "data_options", "mutation_kills_splits"],
    ),
    "metrics": Group(["src/kdlab/eval/metrics.py"], ["kdlab.eval.metrics.*"], ["eval_metrics", "fidelity"]),
    "caches": Group(
        ["src/kdlab/teacher/logit_cache.py", "src/kdlab/teacher/sparse_cache.py"],
        ["kdlab.teacher.logit_cache.*", "kdlab.teacher.sparse_cache.*"],
        ["sparse_teacher", "sparse_tail", "engine", "feature_methods"],
    ),
}
TARGETS = {"losses": 0.90, "methods": 0.80, "loop": 0.80, "splits": 0.80}
KILLED = {"killed", "timeout", "caught by type check"}


def _patch_pytest() -> None:
    """mutmut 3.8 reads ``item._nodeid``, which pytest 9 no longer has; the public ``nodeid`` is the same string."""
    from _pytest.nodes import Node

    if not hasattr(Node, "_nodeid"):
        Node._nodeid = property(lambda self: self.nodeid)  # type: ignore[attr-defined]


def prepare(name: str, group: Group) -> Path:
    """``.mutation/<group>/``: links to src/ and tests/ and a pyproject.toml that configures mutmut for the group.

    (mutmut takes the original ``src`` off ``sys.path`` by its resolved path, so the editable install's entry goes.)
    """
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    for link in ("src", "tests"):
        if not (work / link).is_symlink():
            (work / link).symlink_to(ROOT / link)
    tests = [f"tests/test_{t}.py" for t in group.tests if (ROOT / f"tests/test_{t}.py").exists()]
    lines = [
        "[tool.mutmut]",
        'source_paths = ["src"]',
        f"only_mutate = {json.dumps(group.files)}",
        f"do_not_mutate_patterns = {json.dumps(QUIET + group.skip_lines)}",
        'pytest_add_cli_args = ["-p", "no:cacheprovider"]',
        f"pytest_add_cli_args_test_selection = {json.dumps(tests + SLOW)}",
        "timeout_multiplier = 2.0",
        "",
    ]
    (work / "pyproject.toml").write_text("\n".join(lines))
    return work


def run_mutmut(work: Path, patterns: list[str], children: int) -> int:
    """``mutmut run`` in a fresh process inside ``work`` (mutmut keeps its configuration in globals)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--mutmut", "run", "--max-children", str(children)]
    return subprocess.run([*command, *patterns], cwd=work, check=False).returncode


def _mutmut_here(args: list[str]) -> None:
    """The process ``run_mutmut`` starts: patch pytest, then mutmut's own command line."""
    _patch_pytest()
    from mutmut.__main__ import cli

    cli.main(args=args)


def results(name: str, group: Group) -> dict[str, str]:
    """The group's mutants and their status, as mutmut's own ``results`` command names them."""
    from mutmut.stats import status_by_exit_code

    statuses: dict[str, str] = {}
    for meta in sorted((WORK / name / "mutants" / "src").rglob("*.py.meta")):
        for mutant, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if any(fnmatch.fnmatchcase(mutant, p) for p in group.patterns):
                statuses[mutant] = status_by_exit_code[code]
    return statuses


@functools.cache
def _mutated_module(name: str, module: str):  # -> libcst.Module
    from mutmut.mutation.diff_apply import read_mutants_module

    os.chdir(WORK / name)
    try:
        return read_mutants_module(Path("src", *module.split(".")).with_suffix(".py"))
    finally:
        os.chdir(ROOT)


def changed_line(name: str, mutant: str) -> str:
    """The mutated line(s), ``old`` → ``new``, from the original and the mutated function in mutants/."""
    import libcst as cst
    from mutmut.mutation.diff_apply import read_mutant_function, read_original_function

    module = _mutated_module(name, mutant.split(".x")[0])
    functions = (read_original_function(module, mutant), read_mutant_function(module, mutant))
    old_code, new_code = (cst.Module([f]).code.strip().splitlines() for f in functions)
    diff = list(difflib.unified_diff(old_code, new_code, lineterm=""))
    old = " ".join(line[1:].strip() for line in diff if line.startswith("-") and not line.startswith("---"))
    new = " ".join(line[1:].strip() for line in diff if line.startswith("+") and not line.startswith("+++"))
    return f"`{old[:100]}` → `{new[:100]}`".replace("|", "\\|")


def _score(statuses: dict[str, str], names: list[str], excluded: dict[str, str]) -> tuple[int, int, int, float]:
    """Killed, excluded (equivalent or untestable here), survived, and the score killed / (all − excluded)."""
    killed = sum(statuses[n] in KILLED for n in names)
    left_out = sum(n in excluded and statuses[n] not in KILLED for n in names)
    denominator = len(names) - left_out
    return killed, left_out, len(names) - killed - left_out, killed / denominator if denominator else 1.0


def _notes() -> dict[str, dict[str, str]]:
    return tomllib.loads(NOTES.read_text()) if NOTES.exists() else {}


def write_report(runs: dict[str, dict[str, str]]) -> None:
    notes = _notes()
    equivalent: dict[str, str] = notes.get("equivalent", {})
    untestable: dict[str, str] = notes.get("untestable", {})
    excluded = {**equivalent, **untestable}
    killed_by: dict[str, str] = notes.get("killed_by", {})
    rows, survivors, fixed = [], [], []
    for name, group in GROUPS.items():
        every = results(name, group)
        statuses = {n: s for n, s in every.items() if s != "not checked" or n in excluded}
        not_run = len(every) - len(statuses)
        if not statuses:
            continue
        modules = sorted({n.split(".x")[0] for n in statuses})
        for module in modules:
            names = sorted(n for n in statuses if n.split(".x")[0] == module)
            killed, equiv, survived, score = _score(statuses, names, excluded)
            rows.append(f"| {name} | {module} | {len(names)} | {killed} | {equiv} | {survived} | {score:.1%} |")
            for n in names:
                if statuses[n] in KILLED:
                    if n in killed_by:
                        fixed.append(f"| `{n}` | {changed_line(name, n)} | {killed_by[n]} |")
                    continue
                verdict = (
                    f"equivalent: {equivalent[n]}"
                    if n in equivalent
                    else f"untestable here: {untestable[n]}"
                    if n in untestable
                    else f"**{statuses[n]}**"
                )
                survivors.append(f"| `{n}` | {changed_line(name, n)} | {verdict} |")
        killed, equiv, survived, score = _score(statuses, list(statuses), excluded)
        target = f" (target {TARGETS[name]:.0%})" if name in TARGETS else ""
        left = f", {not_run} not run" if not_run else ""
        rows.append(
            f"| **{name}** | all | {len(statuses)} | {killed} | {equiv} | {survived} | **{score:.1%}**{target}{left} |"
        )
    text = "\n".join(
        [
            "# Mutation testing (mutmut)",
            "",
            "Written by `benchmarks/mutation.py` (`make mutation`); how to read and rerun it: docs/testing.md.",
            "Score = killed / (mutants − excluded). Excluded: equivalent mutants, and the few no test can kill here",
            "(a device argument on a CPU-only machine, the torch.compile path); each is listed with its reason.",
            "A mutant no selected test reaches (`no tests`) counts as a survivor.",
            "Error and warning texts are not mutated; the loop group mutates only the normalisation lines of",
            "`run_loop` and the two tasks' `objective` (and the LM step's window token count).",
            "",
            f"Versions: Python {platform.python_version()}, torch {version('torch')}, mutmut {version('mutmut')}, "
            f"pytest {version('pytest')}.",
            "",
            "| group | command | wall time | load average (1 min) before → after | machine | date |",
            "|---|---|---|---|---|---|",
            *(
                f"| {g} | `{r['command']}` | {r['wall_s']}{' s' * r['wall_s'].isdigit()} | "
                f"{r['load_before']} → {r['load_after']} | {r['machine']} | {r['date']} |"
                for g, r in runs.items()
            ),
            "",
            "| group | module | mutants | killed | excluded | survived | score |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "## Surviving mutants",
            "",
            "| mutant | change | verdict |",
            "|---|---|---|",
            *survivors,
            "",
            "## Survivors of an earlier run that a new test now kills",
            "",
            "| mutant | change | killed by |",
            "|---|---|---|",
            *fixed,
            "",
        ]
    )
    REPORT.write_text(text)
    print(f"wrote {REPORT.relative_to(ROOT)}")


def main() -> None:
    if sys.argv[1:2] == ["--mutmut"]:
        _mutmut_here(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="+", choices=list(GROUPS), default=list(GROUPS))
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--fresh", action="store_true", help="forget earlier mutants and test statistics")
    parser.add_argument("--survivors", action="store_true", help="rerun only the mutants that survived last time")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    runs: dict[str, dict[str, str]] = json.loads(RUNS.read_text()) if RUNS.exists() else {}
    for name in [] if args.report_only else args.modules:
        group = GROUPS[name]
        if args.fresh:
            shutil.rmtree(WORK / name, ignore_errors=True)
        work = prepare(name, group)
        load_before = f"{os.getloadavg()[0]:.2f}"
        start = time.perf_counter()
        known = results(name, group)  # empty before the first run generated the mutants
        excluded = _notes().get("equivalent", {}) | _notes().get("untestable", {})
        patterns = sorted(n for n, s in known.items() if n not in excluded) if known else group.patterns
        if args.survivors:
            patterns = sorted(n for n, s in known.items() if s not in KILLED and n not in excluded)
            if not patterns:
                continue
        status = run_mutmut(work, patterns, args.children)
        wall = time.perf_counter() - start
        if status:
            sys.exit(f"mutmut exited with {status} in group {name}")
        key = name + (" (survivors)" if args.survivors else "")
        record = {
            "command": f"make mutation MODULES={name}" + (" SURVIVORS=1" if args.survivors else ""),
            "wall_s": f"{wall:.0f}",
            "load_before": load_before,
            "load_after": f"{os.getloadavg()[0]:.2f}",
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {args.children} mutmut workers",
        }
        # re-read: another group run at the same time may have recorded itself meanwhile
        runs = {**(json.loads(RUNS.read_text()) if RUNS.exists() else {}), key: record}
        RUNS.write_text(json.dumps(runs, indent=2) + "\n")
    write_report(runs)


if __name__ == "__main__":
    main()
