"""adapterkit: fine-tune language models with interchangeable, pluggable strategies.

Importing this package is cheap: torch and transformers load only when a command needs them.
The functions at the top level mirror the CLI (see `adapterkit._public`); the subpackages are named
for what they hold (`training`, `planning`, `comparison`, `search`), so importing one never hides
the function of the same verb.
"""

from adapterkit._public import (
    compare,
    evaluate,
    generate,
    load,
    merge,
    plan,
    predict,
    sweep,
    train,
)
from adapterkit.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = [
    "__version__",
    "compare",
    "evaluate",
    "generate",
    "hookimpl",
    "load",
    "merge",
    "plan",
    "predict",
    "sweep",
    "train",
]
