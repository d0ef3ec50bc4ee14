"""Where int8 pays on this CPU: file size and latency of float vs int8 MLPs, in PyTorch (torchao) and onnxruntime.

    python benchmarks/int8_footprint.py            # widths 64 256 1024 2048, 3 seeds
    python benchmarks/int8_footprint.py --quick    # widths 64 1024, 3 seeds, fewer timed runs

Fashion-MNIST-shaped MLPs (784 -> w -> w -> 10) for several widths w, each from 3 seeds (initialisations):
  torch float             the float model in eager PyTorch
  torchao int8_dynamic    kdlab.compress.quantize.ptq_int8 (int8 weights + int8 activations per row)
  torchao int8_weight_only
  onnxruntime float       kdlab.compress.export.export_onnx of the float model
  onnxruntime int8        export_onnx of the int8_dynamic model (MatMulInteger on the same int8 weights)
File bytes: safetensors (model.safetensors as kdlab writes it) and the ONNX file. Latency: median of timed runs
after warm-up (kdlab.eval.footprint.median_latency_ms), 1 thread (torch and onnxruntime), batch 1 and 256, on
random inputs (dense kernels' time does not depend on the values); mean ± std over the seeds. Accuracy is not
measured here (untrained weights): benchmarks/compress_fmnist.py measures it for trained students.
Results: benchmarks/results/int8_footprint.{json,md,png}
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import environment

from kdlab import models
from kdlab.compress.export import export_onnx, onnx_session
from kdlab.compress.quantize import ptq_int8, save_quantized
from kdlab.eval.footprint import median_latency_ms
from kdlab.eval.plots import save_png
from kdlab.io import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
FORMATS = ("torch float", "torchao int8_dynamic", "torchao int8_weight_only", "onnxruntime float", "onnxruntime int8")
BATCHES = (1, 256)


def measure_seed(width: int, seed: int, repeats: int, tmp: Path) -> dict[str, dict[str, float]]:
    """File bytes and median latencies of every format for one initialisation."""
    torch.manual_seed(seed)
    model = models.create("mlp", 10, (1, 28, 28), hidden=[width, width]).eval()
    dynamic, weight_only = ptq_int8(model, scheme="int8_dynamic"), ptq_int8(model, scheme="int8_weight_only")
    files = {
        "torch float": tmp / "float.safetensors",
        "torchao int8_dynamic": tmp / "int8_dynamic.safetensors",
        "torchao int8_weight_only": tmp / "int8_weight_only.safetensors",
        "onnxruntime float": tmp / "float.onnx",
        "onnxruntime int8": tmp / "int8.onnx",
    }
    save_file(model.state_dict(), str(files["torch float"]))
    save_quantized(dynamic, files["torchao int8_dynamic"], "int8_dynamic")
    save_quantized(weight_only, files["torchao int8_weight_only"], "int8_weight_only")
    example = torch.randn(2, 1, 28, 28)
    export_onnx(model, example, files["onnxruntime float"])
    export_onnx(dynamic, example, files["onnxruntime int8"])
    runners = {"torch float": model, "torchao int8_dynamic": dynamic, "torchao int8_weight_only": weight_only}
    for name in ("onnxruntime float", "onnxruntime int8"):
        session = onnx_session(files[name], threads=1)
        run = partial(session.run, None)
        runners[name] = lambda x, run=run: run({"input": x.numpy()})
    out: dict[str, dict[str, float]] = {}
    for name in FORMATS:
        row = {"file_bytes": float(files[name].stat().st_size)}
        for batch in BATCHES:
            x = torch.randn(batch, 1, 28, 28)
            row[f"batch_{batch}_ms"] = median_latency_ms(runners[name], x, repeats=repeats, budget_s=5.0)[0]
        out[name] = row
    return out


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, batch in zip(axes, BATCHES, strict=True):
        for name in FORMATS:
            xs = [r["formats"][name]["file_bytes"]["mean"] / 2**20 for r in result["rows"]]
            ys = [r["formats"][name][f"batch_{batch}_ms"]["mean"] for r in result["rows"]]
            ax.plot(xs, ys, marker="o", label=name)
            for r, x, y in zip(result["rows"], xs, ys, strict=True):
                if name == "torch float":
                    ax.annotate(f"w={r['width']}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("file size (MiB)")
        ax.set_ylabel(f"CPU latency, batch {batch} (ms, median)")
        ax.set_title(f"MLP 784-w-w-10, batch {batch}, 1 thread")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--widths", type=int, nargs="+", default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "int8_footprint")
    args = parser.parse_args()
    torch.set_num_threads(1)
    widths = args.widths or ([64, 1024] if args.quick else [64, 256, 1024, 2048])
    repeats = 10 if args.quick else 30
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdlab-int8-") as tmp:
        for width in widths:
            per_seed = [measure_seed(width, seed, repeats, Path(tmp)) for seed in range(args.seeds)]
            formats = {
                name: {key: mean_std([s[name][key] for s in per_seed]) for key in per_seed[0][name]} for name in FORMATS
            }
            params = 784 * width + width + width * width + width + width * 10 + 10
            rows.append({"width": width, "parameters": params, "formats": formats})
            print(f"width {width}: done", flush=True)
    result = {"environment": environment(), "seeds": args.seeds, "repeats": repeats, "threads": 1, "rows": rows}
    env = result["environment"]
    lines = [
        "# int8 vs float: file size and CPU latency (torchao in PyTorch, and onnxruntime)",
        "",
        f"Command: `{env['command']}`  ",
        f"Machine: {env['machine']}; device {env['device']}  ",
        f"Versions: python {env['python']}, torch {env['torch']}, kdlab {env['kdlab']}; {env['date_utc']} UTC  ",
        f"MLP 784-w-w-10 (Fashion-MNIST shape), untrained, {args.seeds} seeds (mean ± std); latency = median of "
        f"up to {repeats} timed runs after 3 warm-up runs, 1 thread, random inputs. A shared, busy host: compare "
        "rows of one run, not absolute numbers across machines.",
        "",
        "| width | params | format | file KiB | batch 1 ms | batch 256 ms | b256 vs torch float |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = r["formats"]["torch float"]["batch_256_ms"]["mean"]
        for name in FORMATS:
            f = r["formats"][name]
            b1, b256 = f["batch_1_ms"], f["batch_256_ms"]
            lines.append(
                f"| {r['width']} | {r['parameters']:,} | {name} | {f['file_bytes']['mean'] / 1024:,.1f} | "
                f"{b1['mean']:.3f} ± {b1['std']:.3f} | {b256['mean']:.2f} ± {b256['std']:.2f} | "
                f"{base / b256['mean']:.2f}× |"
            )
    lines += ["", f"![latency vs size]({args.out.with_suffix('.png').name})"]
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
