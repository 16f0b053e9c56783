"""The one exception type for bad user input (a missing file, an unknown key, broken data).

Raised anywhere (commands, tools, config resolvers); the CLI prints it as one line without a traceback.
Its home is here, not in `cli.py`, so that modules the CLI imports (export, resolvers, tools) can raise it
without importing the CLI back.
"""

from __future__ import annotations


class UserError(Exception):
    """Raised for bad input; printed as one line without a traceback."""
