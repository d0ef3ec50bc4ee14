"""kdlab.data: whole data sets as in-memory tensors (digits, MNIST/Fashion-MNIST, CIFAR, .npz, CSV, image folders),
a seeded validation carve, train-only normalisation, a fingerprint for caches, and vectorised augmentations."""

from .augment import augment, gaussian_noise, mixup, random_crop, random_hflip
from .errors import DataError
from .idx import read_idx
from .load import KNOWN_DATASETS, load_dataset
from .preprocess import PREPROCESS_FILE, Preprocess, load_preprocess
from .splits import DataSplits

__all__ = [
    "KNOWN_DATASETS",
    "PREPROCESS_FILE",
    "DataError",
    "DataSplits",
    "Preprocess",
    "augment",
    "gaussian_noise",
    "load_dataset",
    "load_preprocess",
    "mixup",
    "random_crop",
    "random_hflip",
    "read_idx",
]
