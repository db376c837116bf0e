"""The built-in strategies, registered through the same hook a third-party plugin uses.

Importing this package (or calling the hook) imports no torch: `adapterkit strategies` stays
instant. Torch, transformers and peft are imported inside the strategies' methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapterkit.hookspecs import hookimpl
from adapterkit.strategy import Strategy

from .full import Full
from .head import Head
from .last_n import LastN
from .lora import Lora
from .qlora import Qlora

__all__ = ["Full", "Head", "LastN", "Lora", "Qlora", "register_strategies"]


# Typed as the protocol, so the type checker proves each built-in meets it.
_BUILTINS: tuple[type[Strategy], ...] = (Full, Head, LastN, Lora, Qlora)


@hookimpl
def register_strategies(register: Callable[[type[Any]], None]) -> None:
    for cls in _BUILTINS:
        register(cls)
