"""Batch augmentations: shapes, determinism under a generator, and that they are what they claim to be."""

import pytest
import torch
import torch.nn.functional as F

from kdlab.data import augment, random_crop, random_hflip


def _batch(n: int = 64, c: int = 3, h: int = 8, w: int = 10) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(123))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("fn", [lambda x, g: random_crop(x, 2, g), random_hflip])
def test_shapes_dtypes_and_determinism(fn):
    x = _batch()
    a, b, c = fn(x, _gen(0)), fn(x, _gen(0)), fn(x, _gen(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_flip_twice_is_identity():
    x = _batch()
    once = random_hflip(x, _gen(7))
    assert not torch.equal(once, x)
    assert torch.equal(random_hflip(once, _gen(7)), x)


def test_flip_mirrors_whole_images():
    x = _batch()
    out = random_hflip(x, _gen(3))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert torch.all(flipped ^ kept) and 10 < int(flipped.sum()) < 54
    assert torch.equal(random_hflip(x, _gen(0), p=1.0), x.flip(-1))
    assert torch.equal(random_hflip(x, _gen(0), p=0.0), x)


def test_crop_with_zero_padding_is_identity():
    x = _batch()
    assert torch.equal(random_crop(x, 0, _gen(0)), x)
    assert torch.equal(augment(x, generator=_gen(0)), x)


def test_crops_are_shifts_of_the_padded_image():
    pad = 3
    x = _batch(n=48)
    out = random_crop(x, pad, _gen(5))
    padded = F.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[-2:]
    offsets = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + h, dx : dx + w])
        ]
        assert len(matches) == 1, f"sample {i} is not a window of its padded image"
        offsets.add(matches[0])
    assert len(offsets) > 10  # offsets differ per sample
    assert offsets != {(pad, pad)}


def test_augment_combines_crop_and_flip_deterministically():
    x = _batch()
    a = augment(x, crop_padding=2, hflip=True, generator=_gen(9))
    b = augment(x, crop_padding=2, hflip=True, generator=_gen(9))
    assert torch.equal(a, b) and a.shape == x.shape
    g = _gen(9)  # crop first, then flip, from one generator
    assert torch.equal(a, random_hflip(random_crop(x, 2, g), g))


def test_global_rng_is_used_without_a_generator():
    x = _batch()
    torch.manual_seed(0)
    a = augment(x, crop_padding=1, hflip=True)
    torch.manual_seed(0)
    assert torch.equal(a, augment(x, crop_padding=1, hflip=True))


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        random_crop(torch.zeros(3, 8, 8), 1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        random_hflip(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="padding"):
        random_crop(_batch(), -1)
