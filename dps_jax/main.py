"""The main job: python -m dps_jax.main --config=configs/<task>.py [--config.<key>=<value> ...]

Dispatches the config to `pipeline.run`; any error in the inputs is printed as one line and the
process exits with status 1.
"""

import sys

from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "task config file, e.g. configs/phase_retrieval.py[:ffhq256]",
                                          lock_config=True)


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments: {' '.join(argv[1:])}", file=sys.stderr)
        sys.exit(1)
    from dps_jax import pipeline
    from dps_jax.models.checkpoint import CheckpointFormatError

    try:
        pipeline.run(_CONFIG.value)
    except (pipeline.RunError, CheckpointFormatError, ValueError, OSError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)


def run():
    """Entry point that also turns config-file and flag errors into one line."""
    try:
        argv = flags.FLAGS(sys.argv)
    except flags.Error as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:    # a config file that does not exist, does not import, or rejects its argument
        print(f"error: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(1)
    if _CONFIG.value is None:
        print("error: --config is required, e.g. --config=configs/phase_retrieval.py", file=sys.stderr)
        sys.exit(1)
    main(argv)


if __name__ == "__main__":
    run()
