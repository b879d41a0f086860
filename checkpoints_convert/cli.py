"""What every converter's command line does around its conversion: a termination signal unwinds like Ctrl-C (so
the atomic writer removes its temporary file), a refused file is one line on stderr and status 1."""

from __future__ import annotations

import signal
import sys
from typing import Callable

from checkpoints_convert.torch_reader import CheckpointError


def fail(e) -> int:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    print("error: " + "; ".join(lines), file=sys.stderr)
    return 1


def run(convert: Callable[[], object], done: Callable[[object], str]) -> int:
    """`convert()`, then print `done(its result)`; 0, or 1 with one line for a refused file or an interruption.
    Only CheckpointError and OS errors are caught: a bug of ours still shows its traceback."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        result = convert()
    except (CheckpointError, OSError) as e:
        return fail(e)
    except KeyboardInterrupt:
        return fail("interrupted; nothing was written")
    print(done(result))
    return 0


def add_weight_options(ap) -> None:
    """The options every converter takes for the weights it writes: --dtype and --allow-nonfinite."""
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--allow-nonfinite", action="store_true", help="convert weights that hold NaN or inf")

