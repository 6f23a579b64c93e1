"""raserec-adapter: retrieval augmentation (RaSeRec) for any PyTorch sequential recommender."""

from raserec_adapter.augmenter import RetrievalAugmenter
from raserec_adapter.bank import MemoryBank, SearchResult, TorchMemoryBank, admissible
from raserec_adapter.bank_format import MemoryBankFormatError
from raserec_adapter.checkpoint import CheckpointError
from raserec_adapter.config import (
    AugmenterConfig,
    BankConfig,
    PretrainConfig,
    RAFTConfig,
    RAMConfig,
)
from raserec_adapter.data import (
    Batch,
    DataFormatError,
    LeaveOneOutSplit,
    PrefixSet,
    Sequences,
    iter_batches,
    leave_one_out,
)
from raserec_adapter.datasets import (
    DATASETS,
    ChecksumError,
    DatasetInfo,
    DatasetNotFoundError,
    dataset_path,
    default_cache_dir,
    load_dataset,
)
from raserec_adapter.encoder import EncoderError, SequenceEncoder, WrappedEncoder, wrap_encoder
from raserec_adapter.evaluation import evaluate_ranking, rank_targets
from raserec_adapter.faiss_bank import FaissMemoryBank
from raserec_adapter.layers import Dropout
from raserec_adapter.metrics import RankingMetrics, target_rank
from raserec_adapter.pretraining import evaluate_encoder, pretrain
from raserec_adapter.raft import evaluate_ram, search_neighbours, train_ram
from raserec_adapter.ram import RetrievalAugmentedModule
from raserec_adapter.readers import k_core_filter, read_interactions, read_sequences_txt
from raserec_adapter.reporting import format_table, write_results
from raserec_adapter.train_state import TrainResult

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "AugmenterConfig",
    "BankConfig",
    "Batch",
    "CheckpointError",
    "ChecksumError",
    "DataFormatError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "Dropout",
    "EncoderError",
    "FaissMemoryBank",
    "LeaveOneOutSplit",
    "MemoryBank",
    "MemoryBankFormatError",
    "PrefixSet",
    "PretrainConfig",
    "RAFTConfig",
    "RAMConfig",
    "RankingMetrics",
    "RetrievalAugmentedModule",
    "RetrievalAugmenter",
    "SearchResult",
    "SequenceEncoder",
    "Sequences",
    "TorchMemoryBank",
    "TrainResult",
    "WrappedEncoder",
    "admissible",
    "dataset_path",
    "default_cache_dir",
    "evaluate_encoder",
    "evaluate_ram",
    "evaluate_ranking",
    "format_table",
    "iter_batches",
    "k_core_filter",
    "leave_one_out",
    "load_dataset",
    "pretrain",
    "rank_targets",
    "read_interactions",
    "read_sequences_txt",
    "search_neighbours",
    "target_rank",
    "train_ram",
    "wrap_encoder",
    "write_results",
]
