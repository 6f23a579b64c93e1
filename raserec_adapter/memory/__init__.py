"""Memory banks: the protocol with its no-leakage rule, an exact torch bank, Faiss and Milvus banks.

Faiss is imported only when a :class:`FaissMemoryBank` is created or loaded, pymilvus only when a
:class:`MilvusMemoryBank` is.

Examples:
    >>> import torch
    >>> from raserec_adapter.memory import TorchMemoryBank
    >>> bank = TorchMemoryBank(dim=2)
    >>> keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> bank.add(keys, keys, users=torch.tensor([0, 1]), lengths=torch.tensor([1, 1]))
    >>> bank.search(torch.tensor([[1.0, 0.0]]), k=1).ids.tolist()
    [[0]]
"""

from raserec_adapter.memory.faiss_bank import FaissMemoryBank
from raserec_adapter.memory.milvus_bank import MilvusMemoryBank
from raserec_adapter.memory.protocol import (
    MemoryBank,
    MemoryBankFormatError,
    SearchResult,
    admissible,
)
from raserec_adapter.memory.torch_bank import TorchMemoryBank

__all__ = [
    "FaissMemoryBank",
    "MemoryBank",
    "MemoryBankFormatError",
    "MilvusMemoryBank",
    "SearchResult",
    "TorchMemoryBank",
    "admissible",
]
