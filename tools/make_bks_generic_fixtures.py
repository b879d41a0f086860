"""Regenerate tests/fixtures/bks_generic.npz from a clone of VinAIResearch/blur-kernel-space-exploring (torch
besides; a minute).

    python -m tools.make_bks_generic_fixtures --bkse BKSE_PATH --out tests/fixtures

Runs the reference's BKS-generic (`models.deblurring.joint_deblur.JointDeblur.deblur`, what its
`generic_deblur.py` calls) on one 128 x 128 image, on CPU, in float64, with options/generic_deblur/default.yml
but num_warmup_iters 0 and num_iters 5 (its StepLR steps every num_iters // 5, which must be >= 1; no warm-up
steps, so that the test compiles one program: the warm-ups are the joint step's DIP forward and Adam on an MSE),
and small networks:
- the kernel DIP's input 32 x 32 instead of the 64 x 64 it hard-codes for 256 x 256 images (so z is 1 x 1, as
  the KernelWizard takes at 128 x 128), and no residual blocks (their reflection padding needs 2 x 2);
- its image DIP built by its own `skip` builder as `ImageDIP` calls it, with 8 channels at each of the 5 levels
  and skips of 4 instead of 128 and 16 (a stand-in class in `models.deblurring.image_deblur`);
- its KernelDIP (nf 4, kernel_dim 64) and KernelWizard (8 features, one block per stack);
- torchvision's VGG19 (which its perceptual loss loads with ImageNet weights) as a stand-in module with
  torchvision's layer list and indices at widths // 16;
- every weight from `project_random_state_dict` (seeds in the file's meta; batch norms' running statistics are
  never read: the reference stays in training mode); `.cuda()` a no-op.
Every random draw of the run comes from numpy's default_rng(SEED + 3), in call order: the DIPs' inputs
(`fill_noise`: the kernel DIP's, then the image DIP's) and every `randn_like` perturbation. Recorded: the loss of
every optimiser step (warm-ups and joint), and the image x and kernel latent z of every joint iteration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import types

import numpy as np

from tools.make_bks_fixtures import KDIP as BKS_KDIP, KW     # BKS-styleGAN2's fixture's KernelWizard and DIP
from tools.reference import importable, project_random_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 71
OPTIONS = dict(num_iters=5, num_warmup_iters=0)
SIZE = 128
KDIP = dict(BKS_KDIP, n_blocks=0)
XDIP = dict(channels=8, skip=4, levels=3)
VGG_DIVISOR = 16
VGG_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


def vgg_standin(torch):
    """torchvision.models with a vgg19(pretrained=...) whose `features` are torchvision's layer list (same
    indices) at widths // VGG_DIVISOR, with project_random_state_dict weights."""
    nn = torch.nn

    def vgg19(pretrained=False, **_):
        layers, cin = [], 3
        for v in VGG_LAYERS:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, v // VGG_DIVISOR, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v // VGG_DIVISOR
        net = nn.Module()
        net.features = nn.Sequential(*layers)
        shapes = {k: tuple(v.shape) for k, v in net.features.state_dict().items()}
        net.features.load_state_dict({k: torch.from_numpy(np.float64(v)) for k, v in
                                      project_random_state_dict(shapes, SEED + 5).items()})
        return net

    models = types.ModuleType("torchvision.models")
    models.vgg19 = vgg19
    tv = types.ModuleType("torchvision")
    tv.models = models
    tv.utils = types.ModuleType("torchvision.utils")
    tv.utils.make_grid = None                 # its utils import it for image grids
    return {"torchvision": tv, "torchvision.models": models, "torchvision.utils": tv.utils}


def learnable(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bkse", required=True, help="a clone of VinAIResearch/blur-kernel-space-exploring")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    args = ap.parse_args()
    out_dir = os.path.abspath(args.out)
    import torch
    import yaml

    # float64 throughout: the loop is ill-conditioned in float32 (Adam's first steps normalise gradients of
    # every size, so rounding reaches the image: float32 runs of the same code differ by ~5e-3 after two steps),
    # and the test replays it in float64 to ~1e-10.
    torch.set_default_tensor_type(torch.DoubleTensor)
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    sys.modules.update(vgg_standin(torch))
    importable(args.bkse)
    from models.backbones.skip.skip import skip
    from models.deblurring import image_deblur
    from models.deblurring.joint_deblur import JointDeblur
    from models.kernel_encoding.kernel_wizard import KernelWizard
    from utils import util

    opt = yaml.safe_load(open(os.path.join(args.bkse, "options", "generic_deblur", "default.yml")))
    opt.update(OPTIONS)
    opt["KernelDIP"] = dict(KDIP)
    opt["KernelWizard"] = dict(KW, pretrained="experiments/pretrained/kernel_wizard.pth", img_size=[SIZE, SIZE])
    opt["img_size"] = [SIZE, SIZE]

    def small_image_dip(o):
        c, s, n = XDIP["channels"], XDIP["skip"], XDIP["levels"]
        return skip(o["input_nc"], o["output_nc"], num_channels_down=[c] * n, num_channels_up=[c] * n,
                    num_channels_skip=[s] * n, upsample_mode="bilinear", need_sigmoid=True, need_bias=True,
                    pad=o["padding_type"], act_fun="LeakyReLU")
    image_deblur.ImageDIP = small_image_dip

    kw_net = KernelWizard(opt["KernelWizard"])
    kww = project_random_state_dict({k: tuple(v.shape) for k, v in kw_net.state_dict().items()}, SEED + 1)
    work = tempfile.mkdtemp(prefix="bks_generic_fixture_")
    os.chdir(work)                    # it reads experiments/pretrained/* relative to the working folder
    os.makedirs("experiments/pretrained")
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in kww.items()},
               "experiments/pretrained/kernel_wizard.pth")
    g = torch.Generator().manual_seed(SEED)
    warmup_k = torch.randn(1, 64, SIZE // 128, SIZE // 128, generator=g) * 0.5
    torch.save(warmup_k, "experiments/pretrained/kernel.pth")

    draw_rng = np.random.default_rng(SEED + 3)
    count = {"fill": 0, "randn_like": 0}

    def fill_noise(x, noise_type):
        count["fill"] += 1
        if tuple(x.shape) == (1, 64, 64, 64):                  # the kernel DIP's input, at our size
            x.resize_(1, 64, SIZE // 4, SIZE // 4)
        x.copy_(torch.from_numpy(draw_rng.uniform(0, 1, tuple(x.shape))))

    def np_randn_like(t, *a, **k):
        count["randn_like"] += 1
        return torch.from_numpy(draw_rng.standard_normal(tuple(t.shape)))

    util.fill_noise = fill_noise
    util.img2tensor = lambda img: torch.from_numpy(np.ascontiguousarray(np.transpose(img / 255.0, (2, 0, 1))))
    recorded = {"losses": []}

    class Fixture(JointDeblur):
        def prepare_DIPs(self):
            super().prepare_DIPs()
            for net, seed in ((self.x_dip, SEED + 2), (self.k_dip, SEED + 4)):
                weights = project_random_state_dict(learnable(net), seed)
                net.load_state_dict({k: torch.from_numpy(np.float64(v)) for k, v in weights.items()}, strict=False)
            for name in ("x_dip", "k_dip"):
                net = getattr(self, name)
                real = net.forward

                def forward(z, _real=real, _name=name):
                    out = _real(z)
                    recorded.setdefault(_name + "_all", []).append(out.detach().numpy().copy())
                    return out
                net.forward = forward

    real_backward = torch.Tensor.backward

    def backward(self, *a, **k):
        recorded["losses"].append(float(self))
        return real_backward(self, *a, **k)

    model = Fixture(opt)
    rng = np.random.default_rng(SEED)
    blur = rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    torch.randn_like, torch.Tensor.backward = np_randn_like, backward
    model.deblur(blur)
    torch.Tensor.backward = real_backward
    nhwc = lambda a: np.asarray(a).transpose(0, 2, 3, 1)
    joint_x = [nhwc(x)[0] for x in recorded["x_dip_all"][opt["num_warmup_iters"]:]]      # per joint iteration
    joint_z = [nhwc(z)[0] for z in recorded["k_dip_all"][opt["num_warmup_iters"]:]]
    arrays = {"warmup_k": nhwc(warmup_k.numpy()), "losses": np.asarray(recorded["losses"], np.float64),
              "x_sub": np.stack([x[::8, ::8] for x in joint_x]), "x_sum": np.asarray([x.sum() for x in joint_x]),
              "z": np.stack(joint_z),
              "draw_counts": np.asarray([count["fill"], count["randn_like"]])}
    meta = {"options": {k: opt[k] for k in ("num_iters", "num_warmup_iters", "x_lr", "k_lr", "reg_noise_std")},
            "size": SIZE,
            "kernel_wizard": KW, "kernel_dip": KDIP, "image_dip": XDIP, "vgg_divisor": VGG_DIVISOR,
            "seeds": {"kernel_wizard": SEED + 1, "image_dip": SEED + 2, "draws": SEED + 3, "kernel_dip": SEED + 4,
                      "vgg": SEED + 5, "y": SEED}}
    np.savez_compressed(os.path.join(out_dir, "bks_generic.npz"), meta=json.dumps(meta), **arrays)
    print("draws", count, "losses", len(recorded["losses"]), recorded["losses"])


if __name__ == "__main__":
    main()
