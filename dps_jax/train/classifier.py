"""Train the Fashion-MNIST classifier whose penultimate features give FID-FMNIST and KID-FMNIST.

    python -m dps_jax.train.classifier --config=configs/train/classifier_fmnist.py --workdir=runs/classifier

Cross-entropy with Adam on the training split (random horizontal flips and one-pixel shifts), a cosine
learning rate. Checkpoints `workdir/state.msgpack` (atomic) and resumes from it; writes
`workdir/classifier.msgpack` (float16, readable by `models.classifier.load` and `metrics.fid.load_features`)
and, at the end, `workdir/eval.json`: the test split's accuracy, and the FID-FMNIST of the test split
against the training split (its first `floor_images`, all by default: the floor a perfect generator would
reach) and of the first half of the test split against the second.
"""

from __future__ import annotations

import json
import os
import sys

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dps_jax import data as data_lib
from dps_jax import io
from dps_jax.train import common as training
from dps_jax.metrics import fid
from dps_jax.metrics.batched import map_batches
from dps_jax.models import checkpoint
from dps_jax.models import classifier as clf


def make_train_step(model: clf.Classifier, tx):
    def loss_fn(params, x, labels):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(state, x, labels):
        params, opt_state, n = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, n + 1), loss

    return step


def augment(rng, x):
    """Random horizontal flips and shifts of up to one pixel (edges padded with black, -1)."""
    flip = rng.random(len(x)) < 0.5
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-1.0)
    di, dj = rng.integers(0, 3, 2)
    return pad[:, di:di + x.shape[1], dj:dj + x.shape[2]]


def evaluate(params, config, cfg) -> dict:
    """Held-out accuracy and the FID-FMNIST floors (test vs train, test half vs half)."""
    model = clf.Classifier(config)
    net = fid.FeatureNet(lambda p, x: model.apply({"params": p}, x, method=clf.Classifier.features), params,
                         "classifier", batch=500)
    test = data_lib.fashion_mnist("test", cfg.data.root, cfg.data.image_size)
    labels = data_lib.fashion_mnist_labels("test", cfg.data.root)
    classify = jax.jit(lambda p, x: model.apply({"params": p}, x))
    logits = map_batches(lambda x: classify(params, x), test, batch=500)
    train_x = data_lib.fashion_mnist("train", cfg.data.root, cfg.data.image_size)[:cfg.get("floor_images") or None]
    f_test, f_train = net(test), net(train_x)
    half = len(test) // 2
    return {"test_accuracy": float(np.mean(np.argmax(logits, -1) == labels)),
            "fid_test_vs_train": fid.fid(f_test, f_train),
            "fid_test_half_vs_half": fid.fid(f_test[:half], f_test[half:]),
            "kid_test_half_vs_half": fid.kid(f_test[:half], f_test[half:])[0]}


def train(cfg, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    config = clf.ClassifierConfig(**cfg.model)
    model = clf.Classifier(config)
    tx = optax.adamw(optax.cosine_decay_schedule(cfg.optim.lr, cfg.num_steps, alpha=0.01),
                     weight_decay=cfg.optim.weight_decay)
    key = jax.random.PRNGKey(cfg.seed)

    state_path = os.path.join(workdir, "state.msgpack")
    state = training.resume_or_start(state_path, clf.param_shapes(config),
                                     lambda: clf.init_params(jax.random.fold_in(key, 1), config), tx)
    step_fn = make_train_step(model, tx)
    images = data_lib.fashion_mnist("train", cfg.data.root, cfg.data.image_size)
    labels = data_lib.fashion_mnist_labels("train", cfg.data.root)
    rng = np.random.default_rng(cfg.seed + int(state[2]))
    print(f"{len(images)} training images; classifier {config}", flush=True)

    def save(state):
        io.atomic_write(state_path, flax.serialization.to_bytes(state))
        checkpoint.save_checkpoint(os.path.join(workdir, "classifier.msgpack"), jax.device_get(state[0]), config,
                                   extra={"step": int(state[2]), "trained_by": "dps_jax.train.classifier"},
                                   dtype=np.float16, fmt=clf.FORMAT)

    def step(state):
        idx = rng.integers(0, len(images), cfg.batch_size)
        return step_fn(state, jnp.asarray(augment(rng, images[idx])), jnp.asarray(labels[idx]))

    state, _ = training.loop(state, cfg, step, save, lambda m: f"cross-entropy {m[0]:.4f}")
    # The figures of the file users get: its float16 weights, read back.
    params, _ = clf.load(os.path.join(workdir, "classifier.msgpack"))
    figures = evaluate(params, config, cfg)
    io.atomic_write(os.path.join(workdir, "eval.json"), json.dumps(figures, indent=1).encode())
    print("held-out: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()), flush=True)


cli = training.command(train, __doc__, "dps_jax.train.classifier")

if __name__ == "__main__":
    sys.exit(cli(sys.argv))
