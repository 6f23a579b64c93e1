"""Command-line options generated from the config dataclasses.

Every field of :class:`~raserec_adapter.PretrainConfig`, :class:`~raserec_adapter.BankConfig`,
:class:`~raserec_adapter.RAMConfig` and :class:`~raserec_adapter.RAFTConfig` becomes one option
``--<section>.<field-with-dashes>`` (``--pretrain.batch-size``, ``--bank.index-factory``,
``--ram.k``, ``--raft.epochs``): its type, default and help text come from the config alone,
the help from the ``Attributes:`` section of the class docstring. Booleans get a
``--no-<section>.<field>`` form. Values are checked by the config itself, so a bad value fails
with the config's own message. The few fields the runner sets itself (each seed of ``--seeds``,
the split's ``--max-len``) are listed in :data:`RUNNER_SET`.

Examples:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_config_options(parser)
    >>> args = parser.parse_args(["--pretrain.batch-size", "128", "--bank.prefix-lengths", "1-6"])
    >>> config_from_args(args, "pretrain", seed=3).batch_size
    128
    >>> config_from_args(args, "bank").prefix_lengths
    ((1, 6),)
"""

from __future__ import annotations

import argparse
import inspect
import re
import types
import typing
from dataclasses import MISSING, fields
from typing import Any

from raserec_adapter.config import BankConfig, PretrainConfig, RAFTConfig, RAMConfig

__all__ = [
    "RUNNER_SET",
    "SECTIONS",
    "add_config_options",
    "attribute_docs",
    "config_from_args",
    "help_text",
    "prefix_length_ranges",
]

SECTIONS: dict[str, tuple[type, str]] = {
    "pretrain": (PretrainConfig, "stage 1: pre-training"),
    "bank": (BankConfig, "stage 2: memory bank"),
    "ram": (RAMConfig, "stage 2: the RAM head"),
    "raft": (RAFTConfig, "stage 2: RAFT"),
}
"""Option prefix -> (config class, title of its group in ``--help``)."""

RUNNER_SET: dict[str, str] = {
    "pretrain.seed": "--seeds",
    "pretrain.max_len": "--max-len",
    "raft.seed": "--seeds",
}
"""Config fields the runner sets from one of its own options (named here), not an option each."""

_ATTRIBUTE = re.compile(r"^(\w+)\s*(?:\([^)]*\))?:\s*(.*)$")
_ROLE = re.compile(r":\w+:`~?(?:[\w.]+\.)?([\w]+)`")  # :class:`~a.b.C` -> C
_RANGES = tuple[tuple[int, int | None], ...]


def attribute_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of a class docstring, as ``{name: text on one line}``.

    Examples:
        >>> attribute_docs(RAMConfig)["k"]
        'Memories retrieved per query.'
    """
    lines = (inspect.getdoc(cls) or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        raise ValueError(f"{cls.__name__}'s docstring has no 'Attributes:' section") from None
    section_indent = len(lines[start]) - len(lines[start].lstrip())
    docs: dict[str, list[str]] = {}
    entry_indent: int | None = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= section_indent:
            break  # the next section ("Example:")
        entry_indent = indent if entry_indent is None else entry_indent
        match = _ATTRIBUTE.match(line.strip())
        if indent == entry_indent and match:
            docs[match.group(1)] = [match.group(2)]
        elif docs:
            next(reversed(docs.values())).append(line.strip())
    return {name: " ".join(part for part in text if part) for name, text in docs.items()}


def help_text(doc: str) -> str:
    """A docstring's text as ``--help`` shows it: reST markup (````x````, roles) made plain.

    Examples:
        >>> help_text("``None`` keeps :class:`~raserec_adapter.BankConfig`'s")
        "None keeps BankConfig's"
    """
    return _ROLE.sub(r"\1", doc).replace("``", "")


def prefix_length_ranges(text: str) -> tuple[tuple[int, int | None], ...]:
    """Parses ``"1-2,7-"`` into ``((1, 2), (7, None))`` (``--bank.prefix-lengths``).

    Examples:
        >>> prefix_length_ranges("1-6"), prefix_length_ranges("1-2,7-")
        (((1, 6),), ((1, 2), (7, None)))
    """
    ranges = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            if not sep:
                raise ValueError
            ranges.append((int(lo), int(hi) if hi.strip() else None))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a range like '1-6' or '7-' (comma-separated)"
            ) from None
    return tuple(ranges)


def numbers(text: str) -> tuple[float, ...]:
    """A comma-separated list of numbers (``"0.3,0.5,1"``); ``""`` or ``none`` for none.

    Examples:
        >>> numbers("0.3, 0.5,1"), numbers("none")
        ((0.3, 0.5, 1.0), ())
    """
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.3,0.5,1, got {text!r}"
        ) from None


def _optional(parse: typing.Callable[[str], Any]) -> typing.Callable[[str], Any]:
    def parse_or_none(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")  # argparse's error messages
    return parse_or_none


def _value_type(hint: Any) -> tuple[typing.Callable[[str], Any], str]:
    """How to parse a field of type ``hint`` from the command line, and its metavar."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        parse, metavar = _value_type(inner)
        return _optional(parse), f"{metavar}|none"
    if hint == _RANGES:
        return prefix_length_ranges, "LO-HI,..."
    if hint == tuple[float, ...]:
        return numbers, "X,Y,...|none"
    if hint in (int, float, str):
        return hint, hint.__name__.upper()
    raise TypeError(f"no command-line form for a config field of type {hint!r}")


def _flag(section: str, name: str) -> str:
    return f"--{section}.{name.replace('_', '-')}"


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Adds one option per config field (but :data:`RUNNER_SET`), a group per config.

    Each option's destination is ``"<section>.<field>"`` (``args.__dict__["pretrain.lr"]``);
    :func:`config_from_args` turns them back into configs.
    """
    for section, (cls, title) in SECTIONS.items():
        group = parser.add_argument_group(f"{title} ({cls.__name__})")
        docs = attribute_docs(cls)
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            dest = f"{section}.{f.name}"
            if dest in RUNNER_SET:
                continue
            if f.name not in docs:
                raise ValueError(f"{cls.__name__}.{f.name} is not described under Attributes:")
            assert f.default is not MISSING, f"{cls.__name__}.{f.name} needs a plain default"
            text = help_text(docs[f.name]).replace("%", "%%")
            if hints[f.name] is bool:
                group.add_argument(
                    _flag(section, f.name),
                    dest=dest,
                    action=argparse.BooleanOptionalAction,
                    default=f.default,
                    help=text,
                )
                continue
            parse, metavar = _value_type(hints[f.name])
            group.add_argument(
                _flag(section, f.name),
                dest=dest,
                type=parse,
                metavar=metavar,
                default=f.default,
                help=text,
            )


def config_from_args(args: argparse.Namespace, section: str, **overrides: Any) -> Any:
    """The config of ``section`` (a key of :data:`SECTIONS`) from parsed options.

    ``overrides`` set fields the runner decides (say ``seed=``); they win over the options.

    Raises:
        ValueError: A value the config rejects, with the config's message.
    """
    cls, _ = SECTIONS[section]
    values = vars(args)
    kwargs = {
        f.name: values[f"{section}.{f.name}"]
        for f in fields(cls)
        if f"{section}.{f.name}" in values
    }
    return cls(**{**kwargs, **overrides})
