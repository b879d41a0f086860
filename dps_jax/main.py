"""The main job: python -m dps_jax.main --config=configs/<task>.py[:preset] [--config.<key>=<value> ...]

Parses the config and dispatches it to `pipeline.run`. Any error in the inputs (a config file that does not
load, an unknown override, a bad value, a missing image or checkpoint) is printed as one line
`error: ...` and the process exits with status 1.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags


def one_line(e: BaseException) -> str:
    text = str(e)
    if "Traceback (most recent call last)" in text:
        # ml_collections wraps an error raised inside a config file with its whole traceback; the last
        # line ("ValueError: unknown config preset ...") is the message.
        head = text.split("Error whilst parsing config file")[0].rstrip(": ")
        last = [l for l in text.strip().splitlines() if l.strip()][-1]
        text = f"{head}: {last}" if head else last
    return "error: " + " ".join(text.split())


def cli(argv, stream=sys.stderr) -> int:
    """Run the main job for command-line `argv` (argv[0] is the program); returns the exit status."""
    fv = flags.FlagValues()
    config = config_flags.DEFINE_config_file(
        "config", None, "task config file, e.g. configs/phase_retrieval.py[:ffhq256]", flag_values=fv,
        lock_config=True, sys_argv=list(argv))      # overrides are read from this argv, not sys.argv
    try:
        rest = fv(list(argv))
    except flags.Error as e:
        print(one_line(e), file=stream)
        return 1
    except Exception as e:    # a config file that does not exist, does not import, or rejects its argument
        print(one_line(f"{type(e).__name__}: {e}"), file=stream)
        return 1
    if len(rest) > 1:
        print(f"error: unexpected arguments: {' '.join(rest[1:])}", file=stream)
        return 1
    if config.value is None:
        print("error: --config is required, e.g. --config=configs/phase_retrieval.py", file=stream)
        return 1

    from dps_jax import pipeline
    from dps_jax.models.checkpoint import CheckpointFormatError

    try:
        pipeline.run(config.value, stream=stream)
    except (pipeline.RunError, CheckpointFormatError, ValueError, OSError) as e:
        print(one_line(e), file=stream)
        return 1
    return 0


def run():
    sys.exit(cli(sys.argv))


if __name__ == "__main__":
    run()
