"""Training: stage 1 (collaborative pre-training) and stage 2 (RAFT), as plain functions.

:class:`~raserec_adapter.RetrievalAugmenter` calls these; use them directly to train an encoder
or a RAM outside the facade.
"""

from raserec_adapter.training.pretraining import pretrain
from raserec_adapter.training.raft import fit_raft, search_neighbours
from raserec_adapter.training.state import TrainResult

__all__ = ["TrainResult", "fit_raft", "pretrain", "search_neighbours"]
