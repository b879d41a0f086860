"""The main job: python -m dps_jax.main --config=configs/<task>.py[:preset] [--config.<key>=<value> ...]

Solves one task's inverse problem for the images of `data.root`: draws `num_samples` posterior samples per
image with the config's solver and writes them, their mean and std, and their metrics to a new folder
under `output.root` (`dps_jax.pipeline`). `--help` lists every field of a config, `--print_config` prints
it resolved. Any error in the inputs is one line `error: ...` and exit status 1.
"""

from __future__ import annotations

import sys

from dps_jax import cli as cli_lib


def run_config(cfg, overrides=(), stream=sys.stderr) -> str:
    """Run a resolved config; `overrides`, the keys the command line set, are checked for settings the run
    would not use (another solver's options)."""
    from dps_jax import experiment, pipeline

    unused = experiment.unused_settings(cfg, overrides)
    if unused:
        raise experiment.RunError(f"--config.{unused[0]} is an option of another solver; the run's solver is "
                                  f"{cfg.solver.name!r} (set --config.solver.name, or drop the option)")
    return pipeline.run(cfg, stream=stream)


def cli(argv, stream=sys.stderr, out=sys.stdout) -> int:
    """Run the main job for command-line `argv` (argv[0] is the program); returns the exit status."""
    return cli_lib.main(argv, program="dps_jax.main", doc=__doc__,
                       run=lambda cfg, overrides: run_config(cfg, overrides, stream), stream=stream, out=out)


def run():
    sys.exit(cli(sys.argv))


if __name__ == "__main__":
    run()
