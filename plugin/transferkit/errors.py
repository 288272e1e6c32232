"""The one exception type users see.

Recipes raise `TransferKitError` for anything the user can fix (a wrong column, a missing file, a bad option).
The message names the thing and the fix; the CLI prints it as one line, without a traceback, and exits non-zero.
"""

import os
import sys
from collections.abc import Callable


class TransferKitError(ValueError):
    """A problem with the user's input, raised before training starts, with a message that says how to fix it."""


def exit_on_user_error(main: Callable[[], object]) -> None:
    """Run a CLI entry point; a TransferKitError becomes one line on stderr and exit status 2.

    Tracebacks are for bugs, not for a misspelt column: set TRANSFERKIT_DEBUG=1 (or pass --debug_errors) to see one.
    """
    try:
        main()
    except TransferKitError as err:
        if os.environ.get("TRANSFERKIT_DEBUG") == "1" or "--debug_errors" in sys.argv:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
