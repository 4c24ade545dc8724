"""One kind of error for bad input, and the wrapper that turns it into one line on stderr."""
import errno
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


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


def _disk_full(err: Exception) -> OSError | None:
    """The OSError behind a write to a full disk, if that is what `err` is; safetensors' writer (Rust)
    says it as `I/O error: ... (os error 28)`."""
    from safetensors import SafetensorError

    if isinstance(err, OSError):
        return err if err.errno in DISK_FULL else None
    code = re.search(r"os error (\d+)", str(err)) if isinstance(err, SafetensorError) else None
    return OSError(int(code[1]), os.strerror(int(code[1]))) if code and int(code[1]) in DISK_FULL else None


@contextmanager
def room_for(path=None) -> Iterator[None]:
    """A write that runs out of disk (or over `ulimit -f`) becomes one line naming the output `path`
    (the outermost, when outputs nest), or with no path the file the error names."""
    try:
        yield
    except NoRoom as err:
        raise (NoRoom(err.err, path) if path else err) from None
    except Exception as err:
        if (full := _disk_full(err)) is None:
            raise
        raise NoRoom(full, path) from None


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's or command's main(); a StyleMixError, or a write to a full disk anywhere, becomes
    `error: ...` and exit code 2, no traceback."""
    try:
        with room_for():
            main()
    except StyleMixError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
