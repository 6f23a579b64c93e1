"""Data: user sequences, the leave-one-out split, batching, file readers and named datasets.

Examples:
    >>> from raserec_adapter.data import Sequences, leave_one_out
    >>> split = leave_one_out(Sequences.from_lists([[1, 2, 3, 4], [2, 3, 1, 4, 5]]))
    >>> split.test.targets.tolist()
    [4, 5]
"""

from raserec_adapter.data.batching import Batch, iter_batches
from raserec_adapter.data.datasets import (
    DATASETS,
    ChecksumError,
    DatasetInfo,
    DatasetNotFoundError,
    dataset_path,
    default_cache_dir,
    load_dataset,
)
from raserec_adapter.data.readers import k_core_filter, read_interactions, read_sequences_txt
from raserec_adapter.data.sequences import (
    DataFormatError,
    LeaveOneOutSplit,
    PrefixSet,
    Sequences,
    leave_one_out,
)

__all__ = [
    "DATASETS",
    "Batch",
    "ChecksumError",
    "DataFormatError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "LeaveOneOutSplit",
    "PrefixSet",
    "Sequences",
    "dataset_path",
    "default_cache_dir",
    "iter_batches",
    "k_core_filter",
    "leave_one_out",
    "load_dataset",
    "read_interactions",
    "read_sequences_txt",
]
