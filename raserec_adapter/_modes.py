"""Train/eval modes of a user's model: switched cheaply, and left as they were found.

Examples:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    >>> with modes_kept(net):
    ...     eval_mode(net)
    ...     net[1].training
    False
    >>> net[1].training
    True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from torch import nn

__all__ = ["eval_mode", "keeps_encoder_modes", "modes_kept"]


def eval_mode(module: nn.Module) -> None:
    """``module.eval()`` that touches only what is in training mode.

    ``eval()`` sets every submodule's flag through the slow ``nn.Module.__setattr__`` (a sixth
    of a profiled single-user ``recommend`` for SASRec + RAM).
    """
    for m in module.modules():
        if m.training:
            m.training = False


@contextmanager
def modes_kept(module: nn.Module) -> Iterator[None]:
    """The module leaves the block in the train/eval modes it came with.

    Inference and bank building switch the user's dropout off; a model the user goes on
    training elsewhere must not silently stay that way.
    """
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            if m.training != training:  # setting is slow (nn.Module.__setattr__)
                m.training = training


_Method = TypeVar("_Method", bound=Callable[..., Any])


def keeps_encoder_modes(method: _Method) -> _Method:
    """A method of an object with ``.encoder`` leaves that encoder's train/eval modes as it
    found them (inference switches the user's dropout off; their model must not stay so)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with modes_kept(self.encoder.module):
            return method(self, *args, **kwargs)

    return cast(_Method, wrapper)
