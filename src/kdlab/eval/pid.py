"""Partial information decomposition (PID) of what a teacher representation T and a student representation S
know about the labels Y: Red(Y: T, S), Uni(Y: T \\ S), Uni(Y: S \\ T), Syn and I(Y; T, S), in bits.

Why: RID (Dissanayake et al., AISTATS 2025) calls Red(Y: T, S) the knowledge a student has taken from its teacher
and Uni(Y: T \\ S) the knowledge left to distil; accuracy alone cannot tell a student that copied the teacher's
label-relevant information from one that copied its nuisance (VID's I(T; S) can rise while Red does not).

The measure is BROJA's (Bertschinger et al. 2014): Uni(Y: T \\ S) = min over Q of I_Q(Y; T | S), Q ranging over the
joint distributions with the same (Y, T) and (Y, S) marginals as P. We solve it ourselves, because ``dit``'s
``PID_BROJA`` (a general-purpose optimiser) took 42 s for 3 × 3 × 10 outcomes on the shared 2-core machine, and
the representations need 10 classes × ≥ 8 clusters each. Minimising I_Q(Y; T, S) is minimising
f(Q) = Σ Q log Q(y | t, s), which is 1-smooth relative to the negative entropy, so mirror descent with step 1
converges (Bauschke, Bolte & Teboulle 2017). Its step has a closed form: Q'(t, s, y) ∝ Q(t, s), then a
KL-projection back onto the two marginals, which for each y is a Sinkhorn scaling of the (t, s) matrix. The tests
check the solver against ``dit`` (optional extra ``pid``) and on variables whose decomposition is known.

Continuous representations are discretised first: PCA to a few components, then k-means with ``clusters``
centres (scikit-learn), fitted on the rows given; bootstrap intervals resample the rows of the discrete triple.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kdlab.errors import ConfigError

_TINY = 1e-300
PID_LOG = "pid.jsonl"  # a run's PID over epochs (train.pid_every; kdlab.engine.pid_log writes it)


def read_log(run: str | Path) -> list[dict[str, float]]:
    """The lines of ``<run>/pid.jsonl``, one per measured epoch ([] when the run has none)."""
    path = Path(run) / PID_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class PID:
    """One decomposition, in bits. ``red + unique_t + unique_s + synergy == joint`` (up to the solver's tolerance)."""

    red: float
    unique_t: float
    unique_s: float
    synergy: float
    joint: float  # I(Y; T, S)
    mi_t: float  # I(Y; T) = red + unique_t
    mi_s: float  # I(Y; S) = red + unique_s
    mi_ts: float  # I(T; S): what VID maximises (not a PID term; reported beside it)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def joint_distribution(t: np.ndarray, s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(t, s, y) from three aligned vectors of non-negative integer codes (empirical frequencies)."""
    t, s, y = (np.asarray(v, dtype=np.int64).ravel() for v in (t, s, y))
    if not len(t) == len(s) == len(y) or len(t) == 0:
        raise ConfigError(f"pid: t, s and y must be non-empty and of one length (got {len(t)}, {len(s)}, {len(y)})")
    counts = np.zeros((t.max() + 1, s.max() + 1, y.max() + 1))
    np.add.at(counts, (t, s, y), 1.0)
    return counts / counts.sum()


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _mutual_information(pab: np.ndarray) -> float:
    """I(A; B) of a 2-D joint distribution."""
    return _entropy(pab.sum(1)) + _entropy(pab.sum(0)) - _entropy(pab)


def min_synergy_distribution(p: np.ndarray, iterations: int = 2000, tol: float = 1e-10) -> np.ndarray:
    """The Q with P's (T, Y) and (S, Y) marginals that minimises I_Q(Y; T, S) (mirror descent, see the module)."""
    a = p.sum(axis=1)  # (T, Y)
    b = p.sum(axis=0)  # (S, Y)
    py = p.sum(axis=(0, 1))
    q = np.einsum("ty,sy->tsy", a, b) / np.where(py > 0, py, 1.0)  # P(t|y) P(s|y) P(y): feasible
    previous = np.inf
    u, v = np.ones_like(a), np.ones_like(b)  # Sinkhorn scalings, warm-started across steps (the kernel moves little)
    for _ in range(iterations):
        kernel = q.sum(axis=2)  # Q(t, s): the unnormalised step Q' ∝ Q(t, s) for every y
        for _ in range(200):  # Sinkhorn: rows to a[:, y], columns to b[:, y], for every y at once
            u = a / np.maximum(np.einsum("ts,sy->ty", kernel, v), _TINY)
            v_new = b / np.maximum(np.einsum("ts,ty->sy", kernel, u), _TINY)
            if np.abs(v_new - v).max() < 1e-13:
                v = v_new
                break
            v = v_new
        q = np.einsum("ty,ts,sy->tsy", u, kernel, v)
        conditional = _entropy(q) - _entropy(q.sum(axis=2))  # H_Q(Y | T, S): what the descent maximises
        if abs(conditional - previous) < tol:
            break
        previous = conditional
    return q


def decompose(p: np.ndarray) -> PID:
    """BROJA PID of a joint distribution ``p[t, s, y]`` (any shape, entries ≥ 0, summing to 1)."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 3 or (p < 0).any() or not np.isclose(p.sum(), 1.0):
        raise ConfigError("pid: the joint distribution must be a 3-D array of probabilities p[t, s, y]")
    py = p.sum(axis=(0, 1))
    mi_t = _mutual_information(p.sum(axis=1))
    mi_s = _mutual_information(p.sum(axis=0))
    joint = _mutual_information(p.reshape(-1, p.shape[2]))
    q = min_synergy_distribution(p)
    joint_q = _entropy(py) - (_entropy(q) - _entropy(q.sum(axis=2)))  # min over Q of I_Q(Y; T, S)
    synergy = max(joint - joint_q, 0.0)
    unique_t = max(joint_q - mi_s, 0.0)  # min_Q I_Q(Y; T | S)
    unique_s = max(joint_q - mi_t, 0.0)
    red = mi_t - unique_t
    return PID(red, unique_t, unique_s, synergy, joint, mi_t, mi_s, _mutual_information(p.sum(axis=2)))


def discretize(features: np.ndarray, clusters: int, components: int = 10, seed: int = 0) -> np.ndarray:
    """Cluster codes of (N, ...) features: flattened, PCA to ``components`` (when wider), k-means to ``clusters``."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if x.shape[1] > components:
        x = PCA(n_components=components, random_state=seed).fit_transform(x)
    return KMeans(n_clusters=clusters, n_init=4, random_state=seed).fit_predict(x)


@dataclass(frozen=True)
class PIDEstimate:
    """A decomposition and its bootstrap percentile interval per term (``low``/``high``; same keys as ``PID``)."""

    point: PID
    low: dict[str, float]
    high: dict[str, float]
    clusters: int
    rows: int

    def as_dict(self) -> dict[str, object]:
        return {"point": self.point.as_dict(), "low": self.low, "high": self.high, "clusters": self.clusters,
                "rows": self.rows}  # fmt: skip


def estimate(
    teacher: np.ndarray,
    student: np.ndarray,
    labels: np.ndarray,
    clusters: int = 8,
    components: int = 10,
    bootstrap: int = 20,
    level: float = 0.9,
    seed: int = 0,
) -> PIDEstimate:
    """PID of (teacher, student) features about ``labels``: discretised once, bootstrap over rows for intervals."""
    t = discretize(teacher, clusters, components, seed)
    s = discretize(student, clusters, components, seed)
    y = np.asarray(labels, dtype=np.int64)
    point = decompose(joint_distribution(t, s, y))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        rows = rng.integers(0, len(y), len(y))
        draws.append(decompose(joint_distribution(t[rows], s[rows], y[rows])).as_dict())
    keys = point.as_dict().keys()
    tail = (1 - level) / 2 * 100
    low = {k: float(np.percentile([d[k] for d in draws], tail)) if draws else float("nan") for k in keys}
    high = {k: float(np.percentile([d[k] for d in draws], 100 - tail)) if draws else float("nan") for k in keys}
    return PIDEstimate(point, low, high, clusters, len(y))
