"""raserec-adapter: retrieval augmentation (RaSeRec) for any PyTorch sequential recommender.

The top level holds what a typical user needs: the facade, the configs, the data types and
loaders, the encoder and memory-bank protocols, the banks, the metrics and the errors.
Everything else lives in documented submodules: :mod:`raserec_adapter.models` (SASRec, GRU4Rec,
BERT4Rec), :mod:`raserec_adapter.data`, :mod:`raserec_adapter.memory`,
:mod:`raserec_adapter.training`, :mod:`raserec_adapter.evaluation`, :mod:`raserec_adapter.ram`.
Importing the package does not import Faiss.
"""

from raserec_adapter.augmenter import RetrievalAugmenter
from raserec_adapter.checkpoint import CheckpointError
from raserec_adapter.config import (
    AugmenterConfig,
    BankConfig,
    PretrainConfig,
    RAFTConfig,
    RAMConfig,
    RunOptions,
)
from raserec_adapter.data import (
    DataFormatError,
    LeaveOneOutSplit,
    Sequences,
    leave_one_out,
    load_dataset,
)
from raserec_adapter.encoder import EncoderError, SequenceEncoder, wrap_encoder
from raserec_adapter.evaluation import RankingMetrics
from raserec_adapter.memory import FaissMemoryBank, MemoryBank, TorchMemoryBank

__version__ = "0.1.0"

__all__ = [
    "AugmenterConfig",
    "BankConfig",
    "CheckpointError",
    "DataFormatError",
    "EncoderError",
    "FaissMemoryBank",
    "LeaveOneOutSplit",
    "MemoryBank",
    "PretrainConfig",
    "RAFTConfig",
    "RAMConfig",
    "RankingMetrics",
    "RetrievalAugmenter",
    "RunOptions",
    "SequenceEncoder",
    "Sequences",
    "TorchMemoryBank",
    "leave_one_out",
    "load_dataset",
    "wrap_encoder",
]
