"""Regenerate tests/fixtures/bks_dsd.npz (and bks_dsd_networks.npz) from a clone of
VinAIResearch/blur-kernel-space-exploring (torch besides; a minute).

    python -m tools.make_bks_fixtures --bkse BKSE_PATH --out tests/fixtures

Runs the reference's BKS-styleGAN2 (`models.dsd.dsd_stylegan2.DSDStyleGAN2`, the loop its
`domain_specific_deblur.py` drives) on one blurred image, at small sizes and few iterations, on CPU:
- its StyleGAN2 generator (`models.dsd.stylegan2.Generator`, 256 x 256, style_dim 512 and 14 W+ rows as its code
  fixes them; one mapping layer and the channel table divided by 16, by a subclass that divides the table as the
  constructor sets it), its KernelWizard (8 features, one block per stack, z 64 x 2 x 2) and its KernelDIP (nf 4,
  one residual block, kernel_dim 64), each with `project_random_state_dict` weights (the DIP's are its own
  init, recorded);
- the files it loads from experiments/pretrained/ written beforehand in a scratch folder: the KernelWizard's
  weights, the warm-up kernel (a random z) and the Gaussian fit of the mapping network (mean and std of
  LeakyReLU(5) of 10,000 mapped latents instead of its 1,000,000: the fit is an input of the loop);
- options of stylegan2.yml but num_epochs 5, num_warmup_iters 2, num_x_iters 1, num_k_iters 1 (StepLR's step
  size num_epochs * num_k_iters // 5 must be >= 1), verbose off;
- `.cuda()` made a no-op; its `op` package's CUDA build a no-op (CPU paths); torchvision (imported by its
  utils for an image grid) a stand-in module.
Every random draw the loop makes is recorded (the initial latent and noise maps, the DIP's input and its
per-iteration perturbations `randn_like`), with the loss of every iteration, the best image and kernel it
yields after each epoch. The test replays the loop in JAX on the recorded draws.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import types

import numpy as np

from tools.reference import importable, narrowed, no_cuda_build, project_random_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 61
OPTIONS = dict(num_epochs=5, num_warmup_iters=2, num_x_iters=1, num_k_iters=1)
KW = dict(input_nc=3, nf=8, front_RBs=1, back_RBs=1, N_frames=1, kernel_dim=64, use_vae=False,
          KernelExtractor=dict(norm="none", use_sharp=True, n_blocks=1, padding_type="reflect", use_dropout=False),
          Adapter=dict(norm="none", use_dropout=False))
KDIP = dict(nf=4, n_blocks=1, padding_type="reflect", use_dropout=False, kernel_dim=64, norm="none")
GEN = dict(size=256, style_dim=512, n_mlp=1)
DIVISOR = 16


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bkse", required=True, help="a clone of VinAIResearch/blur-kernel-space-exploring")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    args = ap.parse_args()
    out_dir = os.path.abspath(args.out)
    import torch
    import yaml

    no_cuda_build()
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    for name in ("randn", "zeros"):           # its tensors are made with device="cuda"
        def on_cpu(*a, _f=getattr(torch, name), **k):
            if k.get("device") == "cuda":
                k["device"] = "cpu"
            return _f(*a, **k)
        setattr(torch, name, on_cpu)
    if "torchvision" not in sys.modules:
        tv = types.ModuleType("torchvision")
        tv.utils = types.ModuleType("torchvision.utils")
        tv.utils.make_grid = None
        sys.modules.update({"torchvision": tv, "torchvision.utils": tv.utils})
    importable(args.bkse)
    from models.dsd import stylegan2 as sg
    from models.dsd.dsd_stylegan2 import DSDStyleGAN2
    from models.kernel_encoding.kernel_wizard import KernelWizard

    opt = yaml.safe_load(open(os.path.join(args.bkse, "options", "domain_specific_deblur", "stylegan2.yml")))
    opt.update(OPTIONS, verbose=False, save_intermediate=True)
    opt["KernelDIP"] = dict(KDIP)
    opt["KernelWizard"] = dict(KW, pretrained="experiments/pretrained/kernel_wizard.pth",
                               img_size=[256, 256])

    Narrow = narrowed(sg.Generator, DIVISOR)

    torch.manual_seed(SEED)
    generator = Narrow(**GEN).eval()
    gshapes = {k: tuple(v.shape) for k, v in generator.state_dict().items()}
    gw = project_random_state_dict(gshapes, SEED)
    keep = [k for k in gshapes if k.endswith(".kernel") or k.startswith("noises.")]
    gw.update({k: generator.state_dict()[k].numpy() for k in keep})
    generator.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in gw.items()})
    kw_net = KernelWizard(opt["KernelWizard"])
    kshapes = {k: tuple(v.shape) for k, v in kw_net.state_dict().items()}
    kww = project_random_state_dict(kshapes, SEED + 1)

    work = tempfile.mkdtemp(prefix="bks_fixture_")
    os.chdir(work)                    # it reads experiments/pretrained/* relative to the working folder
    os.makedirs("experiments/pretrained")
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in kww.items()},
               "experiments/pretrained/kernel_wizard.pth")
    g = torch.Generator().manual_seed(SEED)
    warmup_k = torch.randn(1, 64, 2, 2, generator=g) * 0.5
    torch.save(warmup_k, "experiments/pretrained/kernel.pth")
    with torch.no_grad():
        mapped = torch.nn.LeakyReLU(5)(generator.get_latent(torch.randn(10000, 512, generator=g)))
    fit = {"mean": mapped.mean(0), "std": mapped.std(0)}
    torch.save(fit, "experiments/pretrained/gaussian_fit_stylegan2.pt")

    losses = []

    class Fixture(DSDStyleGAN2):
        def load_synthesis_network(self):
            self.synthesis = generator
            for v in self.synthesis.parameters():
                v.requires_grad = False

        def initialize_loss(self, ref_im):
            super().initialize_loss(ref_im)
            real = self.loss_builder.forward

            def forward(*a, **k):
                loss, parts = real(*a, **k)
                losses.append(float(loss))
                return loss, parts
            self.loss_builder.forward = forward

    # Every draw of the loop comes from numpy's default_rng(SEED + 3), in call order, so the test redraws
    # them instead of storing ~25 MB: torch.randn (the latent, then the 14 noise maps), torch.randn_like (the
    # DIP input's perturbation, every iteration), and the DIP input's uniform fill; the DIP's weights are
    # project_random_state_dict(shapes, SEED + 4).
    from utils import util
    from models.dsd import dsd as dsd_module

    draw_rng = np.random.default_rng(SEED + 3)
    real_randn = torch.randn
    count = {"randn": 0, "randn_like": 0}

    def np_randn(*a, **k):
        shape = a[0] if len(a) == 1 and isinstance(a[0], (tuple, list)) else a
        count["randn"] += 1
        t = torch.from_numpy(draw_rng.standard_normal(tuple(shape)).astype(np.float32))
        return t.requires_grad_(bool(k.get("requires_grad", False)))

    def np_randn_like(t, *a, **k):
        count["randn_like"] += 1
        return torch.from_numpy(draw_rng.standard_normal(tuple(t.shape)).astype(np.float32))

    util.fill_noise = lambda x, noise_type: x.copy_(torch.from_numpy(
        draw_rng.uniform(0, 1, tuple(x.shape)).astype(np.float32)))
    dsd_module.util = util
    recorded = {}

    class Replayable(Fixture):
        def initialize_dip(self):
            super().initialize_dip()
            shapes = {k: tuple(v.shape) for k, v in self.k_dip.state_dict().items()}
            self.k_dip.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                                        for k, v in project_random_state_dict(shapes, SEED + 4).items()})

        def initialize_latent_space(self):
            super().initialize_latent_space()
            recorded["latent"] = self.latent.detach().clone()

    model = Replayable(opt, cache_dir=os.path.join(work, "cache"))
    torch.randn, torch.randn_like = np_randn, np_randn_like
    rng = np.random.default_rng(SEED)
    ref_im = torch.from_numpy(rng.uniform(0, 1, (1, 3, 256, 256)).astype(np.float32))
    bests = []
    for epoch, (best_im, best_blur) in enumerate(model(ref_im)):
        bests.append((best_im.numpy().copy(), model.best_ker.detach().numpy().copy()))
    torch.randn = real_randn
    nhwc = lambda a: np.asarray(a).transpose(0, 2, 3, 1).astype(np.float32)
    best = np.stack([nhwc(b[0])[0] for b in bests])
    arrays = {
        "latent": recorded["latent"].numpy(), "warmup_k": nhwc(warmup_k.numpy()),
        "fit_mean": fit["mean"].numpy(), "fit_std": fit["std"].numpy(),
        "best_im_sub": best[:, ::8, ::8], "best_im_sum": best.sum((1, 2, 3)),
        "best_im_sumsq": (best.astype(np.float64) ** 2).sum((1, 2, 3)),
        "best_ker": np.stack([nhwc(b[1])[0] for b in bests]), "losses": np.asarray(losses, np.float64),
        "draw_counts": np.asarray([count["randn"], count["randn_like"]]),
    }
    meta = {"options": {k: opt[k] for k in ("num_epochs", "num_warmup_iters", "num_x_iters", "num_k_iters", "x_lr",
                                            "k_lr", "reg_noise_std", "loss_str", "eps", "noise_type",
                                            "num_trainable_noise_layers", "bad_noise_layers", "lr_schedule")},
            "kernel_wizard": KW, "kernel_dip": KDIP, "generator": dict(GEN, channel_divisor=DIVISOR),
            "seeds": {"generator": SEED, "kernel_wizard": SEED + 1, "draws": SEED + 3, "kernel_dip": SEED + 4,
                      "ref_im": SEED}}
    np.savez_compressed(os.path.join(out_dir, "bks_dsd.npz"), meta=json.dumps(meta), **arrays)
    print("draws", count, "losses", len(losses), losses[:3], "best", [float(np.abs(b[0]).max()) for b in bests])


if __name__ == "__main__":
    main()
