"""Picture of a PTLoss epsilon selection: every candidate's proxy score, plain KD (eps = 0) marked."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .plots import save_png


def plot_selection(selection, path: Path) -> Path:
    """Two panels: sorted proxy scores (lower = closer to the labels), and score against eps_1."""
    scores = [s[selection.metric] for s in selection.scores]
    order = sorted(range(len(scores)), key=scores.__getitem__)
    eps1 = selection.candidates.reshape(len(scores), -1, selection.candidates.shape[-1])[:, :, 0].mean(1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(range(len(order)), [scores[i] for i in order], "o-", ms=3, color="tab:blue", label="candidates")
    rank_kd = order.index(0)
    left.plot([rank_kd], [scores[0]], "s", color="tab:red", ms=8, label="eps = 0 (plain KD)")
    left.plot([0], [scores[selection.index]], "*", color="tab:green", ms=14, label="chosen")
    left.set(
        xlabel="candidates, best first",
        ylabel=f"proxy score ({selection.metric}, lower is better)",
        title="Proxy teacher vs validation labels",
    )
    left.legend()
    right.scatter(eps1.tolist(), scores, s=14, color="tab:blue")
    right.scatter([0.0], [scores[0]], marker="s", color="tab:red", s=50)
    right.scatter([float(eps1[selection.index])], [scores[selection.index]], marker="*", color="tab:green", s=160)
    right.set(
        xlabel="eps_1 (leading coefficient; mean over classes if per-class)",
        ylabel=selection.metric,
        title=f"T = {selection.temperature}",
    )
    fig.tight_layout()
    save_png(fig, path, dpi=110)
    return path
