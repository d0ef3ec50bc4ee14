"""Batch augmentations on whole (N, C, H, W) tensors: one vectorised op per batch, no per-sample Python loop.

They run after normalisation (the data sets are normalised once, in memory), so crop padding fills with 0, the
training mean, rather than with black. Under a given ``torch.Generator`` the result is deterministic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {tuple(x.shape)}")


def _randint(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    # Drawn on the generator's device (a CUDA generator cannot fill a CPU tensor), then moved to the data.
    gen_device = generator.device if generator is not None else device
    return torch.randint(0, high, (n,), generator=generator, device=gen_device).to(device)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad every image by ``padding`` pixels, then take a random H×W window per image (a shift of up to
    ``padding`` pixels each way). ``padding=0`` returns ``x`` unchanged."""
    _check_batch(x)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = _randint(2 * padding + 1, n, generator, x.device)
    left = _randint(2 * padding + 1, n, generator, x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    _check_batch(x)
    gen_device = generator.device if generator is not None else x.device
    flip = (torch.rand(x.shape[0], generator=generator, device=gen_device) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def augment(
    x: torch.Tensor, *, crop_padding: int = 0, hflip: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The standard CIFAR-style recipe: random crop with ``crop_padding``, then a random horizontal flip."""
    if crop_padding:
        x = random_crop(x, crop_padding, generator)
    if hflip:
        x = random_hflip(x, generator)
    return x


def _numpy_rng(generator: torch.Generator | None):
    """A NumPy generator seeded from ``generator`` (torch samples Beta without a generator argument)."""
    import numpy as np

    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device if generator else "cpu")
    return np.random.default_rng(int(seed))


def mixup(x: torch.Tensor, alpha: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mix every row with another row of the batch: lam * x_i + (1 - lam) * x_j, lam ~ Beta(alpha, alpha) per
    row, folded to lam >= 0.5 so that the original row dominates (its label stays the more plausible one).

    For distillation the teacher labels the mixed inputs, so no label mixing is needed (Stanton et al. 2021,
    MixUp distillation data). Any (N, ...) batch; ``alpha=0`` returns ``x`` unchanged.
    """
    if alpha < 0:
        raise ValueError(f"mixup alpha must be >= 0, got {alpha}")
    n = x.shape[0]
    if alpha == 0 or n < 2:
        return x
    gen_device = generator.device if generator is not None else x.device
    partner = torch.randperm(n, generator=generator, device=gen_device).to(x.device)
    lam = torch.from_numpy(_numpy_rng(generator).beta(alpha, alpha, n)).to(x.device, x.dtype)
    lam = torch.maximum(lam, 1 - lam).view((n,) + (1,) * (x.ndim - 1))
    return lam * x + (1 - lam) * x[partner]


def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + N(0, std^2) per element (inputs are normalised, so ``std`` is in units of the data's std)."""
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    if std == 0:
        return x
    gen_device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)
    return x + std * noise
