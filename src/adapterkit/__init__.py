"""adapterkit: fine-tune language models with interchangeable, pluggable strategies.

Importing this package is cheap: torch and transformers load only when a command needs them.
"""

from adapterkit.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
