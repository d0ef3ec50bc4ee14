"""IDX reading, the search order for MNIST-style sets, and downloads from a local HTTP server (never the internet)."""

import gzip
import hashlib
import socket
import struct
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlab.data import DataError, load_dataset, locate, read_idx
from kdlab.data import download as dl

STEMS = list(locate.IDX_FILES.values())
REAL_SYSTEM_DIRS = locate.SYSTEM_DIRS  # before the autouse fixture swaps it out


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + big_endian.tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False, type_code: int = 0x08) -> Path:
    data = idx_bytes(array, type_code)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_idx_set(directory: Path, *, n_train: int = 100, n_test: int = 20, gz: bool = False, seed: int = 0):
    """Four MNIST-style files of tiny 28×28 images; labels cycle 0..9 so every class is present."""
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(directory / f"{stem}{suffix}", array, gz=gz)
    return arrays


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A private HOME, no KDLAB_DATA, no system copies and a dead mirror: nothing here can reach real data."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KDLAB_DATA", raising=False)
    monkeypatch.setattr(locate, "SYSTEM_DIRS", {"fashion_mnist": (), "mnist": ()})
    dead = {name: f"http://127.0.0.1:{_free_port()}/" for name in dl.MIRRORS}
    monkeypatch.setattr(dl, "MIRRORS", dead)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / ("img.gz" if gz else "img"), images, gz=gz)
    out = read_idx(path, ndim=3)
    assert out.dtype == np.uint8 and np.array_equal(out, images)


def test_read_idx_big_endian_types(tmp_path):
    values = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    out = read_idx(write_idx(tmp_path / "ints", values, type_code=0x0C))
    assert np.array_equal(out, values) and out.dtype.byteorder in "=|<"
    floats = np.linspace(-1, 1, 7).astype(np.float32)
    assert np.array_equal(read_idx(write_idx(tmp_path / "floats", floats, type_code=0x0D)), floats)


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        read_idx(path, **kwargs)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    return message


def test_bad_magic_number(tmp_path):
    good = idx_bytes(np.zeros((2, 28, 28), np.uint8))
    path = tmp_path / "bad-magic"
    path.write_bytes(b"\x12\x34" + good[2:])
    assert "bad magic number 0x1234" in _error(path)
    path.write_bytes(b"\x00\x00\x07\x03" + good[4:])  # unknown element type
    assert "bad magic number" in _error(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "truncated"
    path.write_bytes(idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-100])
    message = _error(path)
    assert "size does not match the header" in message and "truncated" in message
    path.write_bytes(idx_bytes(np.zeros((3, 28, 28), np.uint8)) + b"junk")
    assert "trailing bytes" in _error(path)
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    assert "truncated IDX header" in _error(path)
    path.write_bytes(b"\x00\x00")
    assert "shorter than the 4-byte magic number" in _error(path)


def test_truncated_and_corrupt_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    path = tmp_path / "truncated.gz"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated gzip" in _error(path)
    path.write_bytes(data[:10] + bytes(len(data) - 10))
    assert "gzip" in _error(path)


def test_wrong_number_of_dimensions(tmp_path):
    path = write_idx(tmp_path / "labels", np.zeros(4, np.uint8))
    assert "has 1 dimensions, expected 3" in _error(path, ndim=3)


def test_missing_file(tmp_path):
    assert "file not found" in _error(tmp_path / "nope")


def test_labels_images_count_mismatch(tmp_path):
    data = tmp_path / "data"
    make_idx_set(data)
    write_idx(data / "t10k-labels-idx1-ubyte", (np.arange(19) % 10).astype(np.uint8))
    with pytest.raises(DataError, match="count mismatch") as err:
        load_dataset("mnist", path=data)
    assert "t10k-labels-idx1-ubyte" in str(err.value) and "19 labels" in str(err.value)


def test_idx_label_out_of_range(tmp_path):
    data = tmp_path / "data"
    make_idx_set(data)
    write_idx(data / "train-labels-idx1-ubyte", np.full(100, 10, np.uint8))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: label out of range \(10 not in 0..9\)"):
        load_dataset("mnist", path=data)


# ------------------------------------------------------------------------------------- loading and lookup


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_style_from_path(tmp_path, gz):
    arrays = make_idx_set(tmp_path / "data", gz=gz)
    splits = load_dataset("fashion_mnist", path=tmp_path / "data", normalize=False)
    assert splits.in_shape == (1, 28, 28) and splits.num_classes == 10
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (90, 10, 20)
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float()[:, None] / 255
    assert torch.allclose(splits.x_test, expected)
    assert torch.equal(splits.y_test, torch.arange(20) % 10)


def test_kdlab_data_beats_the_cache_which_beats_the_system_dir(tmp_path, monkeypatch):
    env_root, home = tmp_path / "env", tmp_path / "home"
    make_idx_set(env_root / "mnist", n_test=10)
    make_idx_set(home / ".cache" / "kdlab" / "mnist", n_test=20)
    make_idx_set(tmp_path / "system", n_test=30)
    monkeypatch.setattr(locate, "SYSTEM_DIRS", {"mnist": (tmp_path / "system",)})
    monkeypatch.setenv("KDLAB_DATA", str(env_root))
    assert len(load_dataset("mnist", download=False).y_test) == 10
    monkeypatch.delenv("KDLAB_DATA")
    assert len(load_dataset("mnist", download=False).y_test) == 20
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    assert len(load_dataset("mnist", download=False).y_test) == 30
    monkeypatch.setenv("KDLAB_DATA", str(env_root))
    assert len(load_dataset("mnist", path=home / ".cache" / "kdlab" / "mnist").y_test) == 20  # path wins


def test_incomplete_directory_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLAB_DATA", str(tmp_path / "env"))
    make_idx_set(tmp_path / "env" / "mnist")
    (tmp_path / "env" / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    make_idx_set(tmp_path / "home" / ".cache" / "kdlab" / "mnist", n_test=30)
    assert len(load_dataset("mnist", download=False).y_test) == 30


def test_files_in_subfolders_are_found(tmp_path):
    make_idx_set(tmp_path / "root" / "FashionMNIST" / "raw", gz=True)
    assert len(load_dataset("fashion_mnist", path=tmp_path / "root").y_test) == 20


def test_debian_location_is_searched_for_fashion_mnist():
    assert Path("/usr/share/datasets/fashion-mnist") in REAL_SYSTEM_DIRS["fashion_mnist"]


def test_missing_without_download_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("KDLAB_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as err:
        load_dataset("mnist", download=False)
    message = str(err.value)
    assert "download is off" in message and "\n" not in message
    assert str(tmp_path / "env" / "mnist") in message
    assert str(tmp_path / "home" / ".cache" / "kdlab" / "mnist") in message
    assert "KDLAB_DATA" in message and "path=" in message


def test_explicit_path_never_downloads(tmp_path):
    with pytest.raises(DataError, match="IDX files not found in"):
        load_dataset("mnist", path=tmp_path / "empty", download=True)


# ------------------------------------------------------------------------------------------------ download


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A threaded HTTP server on 127.0.0.1 serving generated .gz IDX files; yields (base URL, md5s, arrays)."""
    served = tmp_path / "served"
    arrays = make_idx_set(served, gz=True)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", md5, arrays
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def writes(monkeypatch):
    """Records every file the downloader writes, proving it goes through kdlab.io.atomic_write_bytes."""
    calls: list[Path] = []
    real = dl.atomic_write_bytes

    def spy(path, data):
        calls.append(Path(path))
        return real(path, data)

    monkeypatch.setattr(dl, "atomic_write_bytes", spy)
    return calls


def test_download_with_correct_checksums(tmp_path, monkeypatch, server, writes):
    url, md5, arrays = server
    monkeypatch.setitem(dl.MIRRORS, "mnist", url)
    monkeypatch.setitem(dl.CHECKSUMS, "mnist", md5)
    splits = load_dataset("mnist", normalize=False)
    cache = tmp_path / "home" / ".cache" / "kdlab" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in STEMS)  # no temp files left
    assert sorted(writes) == sorted(cache / f"{s}.gz" for s in STEMS)
    for p in cache.iterdir():
        assert hashlib.md5(p.read_bytes()).hexdigest() == md5[p.name]
    assert torch.equal(splits.y_test, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    writes.clear()
    monkeypatch.setitem(dl.MIRRORS, "mnist", f"http://127.0.0.1:{_free_port()}/")  # now offline: cache suffices
    assert load_dataset("mnist", normalize=False).fingerprint == splits.fingerprint
    assert writes == []


def test_download_accepts_sha256(tmp_path, monkeypatch, server):
    url, _, _ = server
    served = tmp_path / "served"
    sha = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in served.iterdir()}
    monkeypatch.setitem(dl.MIRRORS, "fashion_mnist", url)
    monkeypatch.setitem(dl.CHECKSUMS, "fashion_mnist", sha)
    assert len(load_dataset("fashion_mnist").y_test) == 20


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, monkeypatch, server, writes):
    url, md5, _ = server
    monkeypatch.setitem(dl.MIRRORS, "mnist", url)
    monkeypatch.setitem(dl.CHECKSUMS, "mnist", {name: "0" * 32 for name in md5})
    with pytest.raises(DataError, match="checksum mismatch") as err:
        load_dataset("mnist")
    assert "train-images-idx3-ubyte.gz" in str(err.value) and "\n" not in str(err.value)
    cache = tmp_path / "home" / ".cache" / "kdlab" / "mnist"
    assert not cache.exists() or list(cache.iterdir()) == []
    assert writes == []


def test_one_bad_file_is_not_cached_but_good_ones_are(tmp_path, monkeypatch, server):
    url, md5, _ = server
    monkeypatch.setitem(dl.MIRRORS, "mnist", url)
    monkeypatch.setitem(dl.CHECKSUMS, "mnist", {**md5, "t10k-images-idx3-ubyte.gz": "f" * 32})
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: checksum mismatch"):
        load_dataset("mnist")
    cache = tmp_path / "home" / ".cache" / "kdlab" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    monkeypatch.setitem(dl.CHECKSUMS, "mnist", md5)  # the next run fetches only what is missing
    assert len(load_dataset("mnist").y_test) == 20


def test_network_failure_is_one_clear_line(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("mnist")  # the autouse fixture points the mirror at a closed port
    message = str(err.value)
    assert "download failed" in message and "\n" not in message
    assert "looked in" in message and str(tmp_path / "home" / ".cache" / "kdlab" / "mnist") in message
    assert "KDLAB_DATA" in message
    cache = tmp_path / "home" / ".cache" / "kdlab" / "mnist"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_http_error_is_a_data_error(tmp_path, monkeypatch, server):
    url, md5, _ = server
    monkeypatch.setitem(dl.MIRRORS, "mnist", url + "missing/")
    monkeypatch.setitem(dl.CHECKSUMS, "mnist", md5)
    with pytest.raises(DataError, match="404"):
        load_dataset("mnist")


def test_official_checksum_table_is_complete():
    for name in ("mnist", "fashion_mnist"):
        assert sorted(dl.CHECKSUMS[name]) == sorted(f"{s}.gz" for s in STEMS)
        assert all(len(v) == 32 and int(v, 16) >= 0 for v in dl.CHECKSUMS[name].values())
