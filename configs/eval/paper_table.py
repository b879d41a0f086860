"""The paper's comparison table on the shipped prior: every method on every task, 64 held-out images.

    python -m dps_jax.evaluate --config=configs/eval/paper_table.py

64 Fashion-MNIST test images never trained on (t10k 100-163; `apt-get install dataset-fashion-mnist`).
Each cell runs its task config's `settings()` with that method (every solver at its tuned options and step
count); `cells` overrides a field in every cell, typed like the task configs' fields, for example
`--config.cells.solver.ddrm.eta=0.5` or `--config.cells.model.dtype=bfloat16`. The paper's setting is one
override away, for example:

    python -m dps_jax.evaluate --config=configs/eval/paper_table.py --config.preset=ffhq256 \
        --config.model.checkpoint=ffhq256.msgpack --config.data.source=folder --config.data.root=ffhq_val \
        --config.data.image_size=256 --config.data.num_images=1000

and DAPS's (its 100 FFHQ test images, box holes 32 pixels from the border, phase retrieval on [0, 1]):

    python -m dps_jax.evaluate --config=configs/eval/paper_table.py --config.preset=ffhq256 --config.protocol=daps \
        --config.model.checkpoint=ffhq256.msgpack --config.data.source=folder --config.data.root=ffhq_test \
        --config.data.image_size=256 --config.data.num_images=100
"""

import ml_collections

from dps_jax import config_base


def get_config():
    c = ml_collections.ConfigDict()
    c.preset = "fmnist32"                 # the task configs' preset: fmnist32, ffhq256, imagenet256
    c.tasks = ",".join(config_base.TASKS)
    # The paper's methods, then those its readers compare with; each runs on the tasks it supports (the
    # others are n/a with a reason). The paper's alone take about 80 of the ~4 hours on 2 CPU cores.
    c.methods = ("ps,ddrm,mcg,projection,admm_tv,er,hio,oss,pnp_admm,"
                 "pigdm,reddiff,diffpir,daps,ps_unit,scoreald,sdedit")
    c.pr_samples = 4                      # samples / restarts per image for phase retrieval (the paper: 4)
    # How each task is measured: "dps" (the DPS paper's: each task config) or "daps" (DAPS's and
    # InverseBench's: box holes 1/8 of the side from the border, phase retrieval on [0, 1] images;
    # `config_base.PROTOCOLS`).
    c.protocol = "dps"
    c.seed = 0
    # Task-config fields set in every cell (None: each task config's own), e.g. cells.solver.ps.steps.
    c.cells = config_base.cell_overrides()
    c.model = ml_collections.ConfigDict(dict(checkpoint=""))     # "" = the shipped prior
    c.data = ml_collections.ConfigDict(dict(
        source="fashion_mnist",           # or "folder": every image in data.root ("" = the shipped test images)
        fashion_mnist_root="",            # "" = $DPS_JAX_FASHION_MNIST or /usr/share/datasets/fashion-mnist
        first=100, num_images=64, root="", image_size=32))
    # The paper's metrics, from the reconstructions each cell keeps: FID / KID on "" = the shipped
    # Fashion-MNIST classifier (FID-FMNIST), a converted Inception file, or "none"; LPIPS with a converted
    # file ("" = off). See `python -m checkpoints_convert.metrics --help`.
    c.metrics = ml_collections.ConfigDict(dict(fid_weights="", lpips_weights=""))
    c.grid_image = 0                      # which image grid.png shows
    c.output = ml_collections.ConfigDict(dict(root="outputs/paper_table", png_scale=3))
    c.compilation_cache = "~/.cache/dps_jax/xla"
    return c
