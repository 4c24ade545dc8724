"""One kind of error for bad input, and the wrapper that turns it into one line on stderr."""
import sys
from collections.abc import Callable


class StyleMixError(Exception):
    """Bad input or setup: the message names the file, style or params key and what to do."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's or command's main(); a StyleMixError becomes `error: ...` and exit code 2, no traceback."""
    try:
        main()
    except StyleMixError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
