"""What the trainers share (`train.py`, the diffusion prior; `train_denoiser.py`, DnCNN; `train_kernel.py`,
the KernelWizard; `train_classifier.py`, the FID-FMNIST classifier): the training images of a config, atomic
file writes, resuming a saved training state, the step loop and the command line."""

from __future__ import annotations

import os
import time
from typing import Callable

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from dps_jax import data as data_lib
from dps_jax.models import msgpack_io


def training_images(cfg) -> np.ndarray:
    """(N, H, W, C) in [-1, 1]: Fashion-MNIST's training split or an image folder, as the config says."""
    if cfg.data.name == "fashion_mnist":
        return data_lib.fashion_mnist("train", cfg.data.root, cfg.data.image_size)
    return data_lib.image_folder(cfg.data.root, cfg.data.image_size, cfg.data.channels)


def restore_state(path: str, template):
    """The training state saved at `path`, read as untrusted input (`models.msgpack_io`: bounded, typed,
    finite) and checked key by key against `template` (ShapeDtypeStructs) before anything is built from it;
    its step counter (the last element) must be a count a run can reach. A bad state is a ValueError of one
    line that says what to delete."""
    hint = f"; delete {path} to start afresh, or point --workdir elsewhere"
    try:
        tree = msgpack_io.read_tree(path)
        msgpack_io.check_tree(tree, flax.serialization.to_state_dict(template), f"{path}: state")
    except msgpack_io.WeightFileError as e:
        detail = str(e).removeprefix(f"{path}: ")           # the path is said once, not shortened away
        raise ValueError(f"training state {path} does not match the configured model and optimiser: "
                         + msgpack_io.shorten(detail, 160) + hint) from None
    restored = flax.serialization.from_state_dict(template, tree)
    step = np.asarray(jax.tree_util.tree_leaves(restored)[-1])
    if step.shape != () or not 0 <= int(step) < 2 ** 31:
        raise ValueError(f"training state {path}: step {msgpack_io.shorten(str(step), 40)} is not a step count"
                         + hint)
    return jax.tree_util.tree_map(lambda w, g: jnp.asarray(g, w.dtype), template, restored)


def random_batch(rng: np.random.Generator, data: np.ndarray, batch_size: int):
    """`batch_size` images of `data` (N, H, W, C) drawn with replacement, the whole batch flipped left-right
    half of the time (the trainers' one augmentation): (batch_size, H, W, C) on the device."""
    x = data[rng.integers(0, len(data), batch_size)]
    if rng.random() < 0.5:
        x = x[:, :, ::-1]
    return jnp.asarray(x)


def resume_or_start(path: str, shapes, init: Callable, tx):
    """(params, optimiser state, step): restored from the training state at `path` if there is one (checked
    against `shapes`, the params' ShapeDtypeStructs), else `init()`'s params at step 0. For params drawn
    outside jax (numpy), which jax.eval_shape cannot trace."""
    if os.path.exists(path):
        template = (shapes, jax.eval_shape(tx.init, shapes), jax.ShapeDtypeStruct((), jnp.int32))
        state = restore_state(path, template)
        print(f"resumed from {path} at step {int(state[2])}", flush=True)
        return state
    params = jax.tree_util.tree_map(jnp.asarray, init())
    return params, tx.init(params), jnp.zeros((), jnp.int32)


def loop(state, cfg, step: Callable, save: Callable, describe: Callable):
    """Run `step(state) -> (state, aux)` until the step counter `state[-1]` reaches `cfg.num_steps`.

    Every `cfg.log_every` steps prints `describe(mean aux of those steps)` with the rate and the time left;
    calls `save(state)` every `cfg.checkpoint_minutes` and at the end. Returns (state, [aux per step run]).
    """
    t_start, last_save, logs, start = time.time(), time.time(), [], int(state[-1])
    while int(state[-1]) < cfg.num_steps:
        state, aux = step(state)
        logs.append(np.atleast_1d(np.asarray(aux, np.float64)))
        n = int(state[-1])
        if n % cfg.log_every == 0 or n == cfg.num_steps:
            rate = (n - start) / (time.time() - t_start)
            print(f"step {n}/{cfg.num_steps} {describe(np.mean(logs[-cfg.log_every:], 0))} {rate:.2f} steps/s "
                  f"eta {(cfg.num_steps - n) / max(rate, 1e-9) / 60:.1f} min", flush=True)
        if time.time() - last_save > 60 * cfg.checkpoint_minutes:
            save(state)
            last_save = time.time()
    save(state)
    return state, logs


def command(train: Callable, doc: str, program: str) -> Callable:
    """The command line of a trainer, `cli(argv) -> exit status`: `--config` and `--workdir` through the
    helper every config-file command shares (`dps_jax.cli`); calls `train(config, workdir)`."""
    from dps_jax import cli as cli_lib

    def cli(argv, stream=None, out=None) -> int:
        return cli_lib.main(argv, program=program, doc=doc, subdir="train", stream=stream, out=out,
                            extra={"workdir": "directory for the training state and the trained model"},
                            run=lambda cfg, overrides, workdir: train(cfg, workdir))
    return cli
