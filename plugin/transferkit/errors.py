"""The one exception type users see.

Recipes raise `TransferKitError` for anything the user can fix (a wrong column, a missing file, a bad option).
The message names the thing and the fix; the CLI prints it as one line, without a traceback, and exits non-zero.
"""


class TransferKitError(ValueError):
    """A problem with the user's input, raised before training starts, with a message that says how to fix it."""
