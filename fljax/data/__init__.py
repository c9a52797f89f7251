"""Datasets (embedded, IDX, TFDS, LEAF, synthetic) and federated partitions."""

from fljax.data.datasets import (
    DATASETS,
    EMBEDDED,
    NATURAL_DATASETS,
    Dataset,
    breast_cancer,
    check_name,
    digits,
    idx_dataset,
    load,
    mnist5k,
    mnist_format,
    tfds_dataset,
)
from fljax.data.edge import EDGE_SOURCES, edge_digits
from fljax.data.federated import MALICIOUS_DATA, METHODS, FederatedData, federate, federate_honest
from fljax.data.idx import read_idx
from fljax.data.leaf import femnist, shakespeare
from fljax.data.natural import natural
from fljax.data.partition import PARTITIONS, bias, dirichlet, iid, partition, shards
from fljax.data.synthetic import SYNTHETIC, synthetic

__all__ = [
    "DATASETS",
    "EDGE_SOURCES",
    "EMBEDDED",
    "MALICIOUS_DATA",
    "METHODS",
    "NATURAL_DATASETS",
    "PARTITIONS",
    "SYNTHETIC",
    "Dataset",
    "FederatedData",
    "bias",
    "breast_cancer",
    "check_name",
    "digits",
    "dirichlet",
    "edge_digits",
    "federate",
    "federate_honest",
    "femnist",
    "idx_dataset",
    "iid",
    "load",
    "mnist5k",
    "mnist_format",
    "natural",
    "partition",
    "read_idx",
    "shakespeare",
    "shards",
    "synthetic",
    "tfds_dataset",
]
