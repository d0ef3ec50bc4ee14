"""Tables and one-line summaries of runs for the terminal (rich), shared by the ``kdlab`` commands."""

from __future__ import annotations

from rich import box
from rich.table import Table


def summary_table(rows: list[dict], title: str) -> Table:
    """One row per run: what it was and how it did on the test split; "teacher" is the teacher's accuracy measured
    before distilling (on validation; "!" where the teacher check warned)."""
    table = Table(title=title, box=box.SIMPLE_HEAD)
    columns = ("run", "model", "method", "params", "test acc", "NLL", "ECE", "agree", "KL t‖s", "teacher", "sec")
    for column in columns:
        table.add_column(column, justify="left" if column in ("run", "model", "method") else "right", no_wrap=True)

    def fmt(metrics: dict, key: str, digits: int = 3) -> str:
        return f"{metrics[key]:.{digits}f}" if key in metrics else "-"

    for row in rows:
        test = row["test"]
        table.add_row(
            row["name"],
            row["model"],
            row["method"].split("(")[0],
            f"{row['parameters']:,}",
            fmt(test, "accuracy", 4),
            fmt(test, "nll"),
            fmt(test, "ece"),
            fmt(test, "agreement"),
            fmt(test, "kl_teacher"),
            _teacher_cell(row.get("teacher_check")),
            f"{row['wall_seconds']:.0f}",
        )
    return table


def _teacher_cell(check: dict | None) -> str:
    if not check or "accuracy" not in check:
        return "-"
    return f"{check['accuracy']:.4f}" + ("!" if check.get("status") == "warning" else "")


EVAL_COLUMNS = {
    "perplexity": "ppl",  # causal LMs
    "accuracy": "acc",
    "nll": "NLL",
    "ece": "ECE",
    "agreement": "agree",
    "kl_teacher": "KL t‖s",
    "teacher_accuracy": "teacher acc",
    "proxy_agreement": "agree proxy",
    "kl_proxy": "KL proxy‖s",
}


def footprint_line(fp: dict) -> str:
    """File size, parameters, non-zeros and (if measured) the median CPU latencies, on one line."""
    line = (
        f"footprint: {fp['file_bytes']:,} bytes on disk, {fp['parameters']:,} parameters "
        f"({fp['nonzero_parameters']:,} non-zero, {fp['parameter_bytes']:,} bytes in memory)"
    )
    if "latency_ms" in fp:
        timings = ", ".join(f"batch {k.split('_')[1]} {v:.3f} ms" for k, v in fp["latency_ms"].items())
        line += f"; CPU latency (median, {fp['threads']} threads): {timings}"
    return line


def evaluation_table(result: dict, title: str) -> Table:
    """One row per split; fidelity columns only where the run had a teacher (and a proxy teacher)."""
    splits = [s for s in ("train", "val", "test") if s in result]
    keys = [k for k in EVAL_COLUMNS if any(k in result[s] for s in splits)]
    table = Table(title=title, box=box.SIMPLE_HEAD)
    table.add_column("split")
    for key in keys:
        table.add_column(EVAL_COLUMNS[key], justify="right")
    for split in splits:
        table.add_row(split, *(f"{result[split][k]:.4f}" if k in result[split] else "-" for k in keys))
    return table


def predictor_lines(result: dict) -> list[str]:
    """ReAugKD's retrieval (a method's predictor): accuracy with and without it per split, the KB's kNN accuracy,
    the k and β chosen on validation, and the latency it adds."""
    extra = result.get("predictor")
    if not extra:
        return []
    choice = extra["choice"]
    lines = [f"retrieval: k {choice['k']}, beta {choice['beta']} (chosen on {choice.get('chosen_on', 'val')})"]
    for split in ("train", "val", "test"):
        m = result.get(split, {}).get("predictor")
        if m:
            lines.append(
                f"  {split}: accuracy {m['accuracy_without_retrieval']:.4f} without retrieval, "
                f"{m['accuracy_with_retrieval']:.4f} with; kNN of the KB alone {m['knn_accuracy']:.4f}"
            )
    kb_bytes = sum(extra["files"].values())
    latency = extra.get("latency_ms")
    cost = f"knowledge base {kb_bytes:,} bytes on disk"
    if latency:
        cost += "; latency " + ", ".join(
            f"batch {k.split('_')[1]} {v['student']:.3f} -> {v['with_retrieval']:.3f} ms ({v['overhead']:+.0%})"
            for k, v in latency.items()
        )
    return [*lines, "  " + cost]


def quantize_line(q: dict) -> str:
    """One line on what int8 quantization kept: accuracy before/after, agreement, bytes on disk."""
    return (
        f"int8 {q['mode']} ({q['scheme']}, {q['int8_linear_layers']}/{q['linear_layers']} Linear layers): "
        f"test acc {q['float_test_accuracy']:.4f} before conversion -> {q['int8_test_accuracy']:.4f} int8, "
        f"agreement {q['agreement_with_float']:.4f}; {q['float_file_bytes']:,} -> {q['int8_file_bytes']:,} bytes"
    )
