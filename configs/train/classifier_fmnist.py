"""Training the Fashion-MNIST classifier that ships with dps_jax (the feature network of FID-FMNIST):
`dps_jax/assets/fmnist_classifier.msgpack`.

    python -m dps_jax.train.classifier --config=configs/train/classifier_fmnist.py --workdir=runs/classifier
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(name="fashion_mnist", root="",
                                            image_size=32, channels=1))
    # ClassifierConfig fields: 32 x 32 -> 16 -> 8 -> 4 stages, 256 penultimate features.
    c.model = ml_collections.ConfigDict(dict(in_channels=1, image_size=32, widths=(32, 64, 128), features=256,
                                             classes=10))
    c.optim = ml_collections.ConfigDict(dict(lr=2e-3, weight_decay=1e-4))
    c.batch_size = 128
    c.num_steps = 4000                   # about 8.5 epochs
    c.log_every = 100
    c.checkpoint_minutes = 5.0
    return c
