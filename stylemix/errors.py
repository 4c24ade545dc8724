"""One kind of error for bad input, and the wrapper that turns it into one line on stderr."""
import errno
import sys
from collections.abc import Callable


class StyleMixError(Exception):
    """Bad input or setup: the message names the file, style or params key and what to do."""


DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}  # no space, over a size limit (ulimit -f), over quota


class NoRoom(StyleMixError):
    """A write that ran out of disk: `err` is the OSError, the message names the output."""

    def __init__(self, err: OSError, path=None) -> None:
        said = (f"{path}: no room to write it ({err.strerror}); what was there before is as it was" if path else
                f"{err.filename or 'a file'}: no room to write it ({err.strerror})")
        super().__init__(f"{said}: free disk space (`df -h`) and run it again")
        self.err = err


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's or command's main(); a StyleMixError, or a write to a full disk, becomes `error: ...` and exit code 2, no traceback."""
    try:
        main()
    except StyleMixError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.errno not in DISK_FULL:  # a full disk where no stylemix.outputs helper writes: one line too
            raise
        print(f"error: {NoRoom(err)}", file=sys.stderr)
        sys.exit(2)
