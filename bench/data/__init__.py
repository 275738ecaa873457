"""Image-classification datasets for the benchmark, registered by name in ``DATASETS``; one module per source.

``base`` holds the interface and the in-memory tensor dataset; ``idx`` (Fashion-MNIST, MNIST), ``cifar``,
``folder`` (ImageNet) and ``fakedata`` (synthetic) each register their builders when imported, which this package
does; ``options`` checks a suite's options and builds the dataset. Plugins import everything from ``bench.data``.
"""

from bench.core.registry import DATASETS
from bench.data.base import (
    DATA_ROOT_ENV,
    DataError,
    Dataset,
    DatasetInfo,
    TensorImageDataset,
    resize_images,
    resolve_data_root,
)
from bench.data.cifar import cifar10, cifar100, read_cifar_pickle
from bench.data.fakedata import synthetic
from bench.data.folder import ImageFolderDataset, imagenet
from bench.data.idx import FASHION_MNIST_SYSTEM_DIR, IDX_STEMS, MNIST_SUBSET_SOURCE, fashion_mnist, mnist, read_idx
from bench.data.options import (
    OPTION_LOW,
    build_dataset,
    check_data_root,
    check_dataset_options,
    data_source,
    keyed_dataset_options,
)

__all__ = [
    "DATASETS",
    "DATA_ROOT_ENV",
    "FASHION_MNIST_SYSTEM_DIR",
    "MNIST_SUBSET_SOURCE",
    "OPTION_LOW",
    "DataError",
    "Dataset",
    "DatasetInfo",
    "ImageFolderDataset",
    "TensorImageDataset",
    "IDX_STEMS",  # the file names of an IDX tree
    "read_cifar_pickle",
    "build_dataset",
    "check_data_root",
    "check_dataset_options",
    "cifar10",
    "cifar100",
    "data_source",
    "fashion_mnist",
    "imagenet",
    "keyed_dataset_options",
    "mnist",
    "read_idx",
    "resize_images",
    "resolve_data_root",
    "synthetic",
]
