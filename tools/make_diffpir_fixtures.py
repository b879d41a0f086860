"""A DiffPIR fixture from its reference code (yuanzhi-zhu/DiffPIR), never copied: the reference's inpainting
script (`main_ddpir_inpainting.py`, whose sampler is written inline in `main`) run as it is, on the
random-weight adm_ffhq_like network and one random 16 x 16 image.

    # a clone of yuanzhi-zhu/DiffPIR, torch (CPU), opencv
    pip install torch==2.13.0 numpy opencv-python-headless matplotlib
    python -m tools.make_diffpir_fixtures --diffpir DIFFPIR_PATH --out /tmp/regen [--reuse tests/fixtures]
    DPS_JAX_FIXTURES=/tmp/regen python -m pytest tests/test_diffpir.py

How it runs unchanged: in a temporary directory it lays out what the script reads (the network as
`model_zoo/diffusion_ffhq_10m.pt`, the image as `testsets/demo_test/`), and it replaces only the model's
constructor (`create_model_and_diffusion` returns guided-diffusion's UNetModel in the small adm_ffhq_like layout
and the reference's own diffusion for the 1000-step linear schedule) and gives its mask generator the image
size (the script leaves it at 256). Its settings are the script's own: 20 steps
of quadratic spacing, lambda 1, zeta 1, noiseless y, a random 50% mask (numpy seed 0, drawn by its own
mask generator). Recorded on the way: every `torch.randn_like` draw, each call of the reference's
`utils_model.model_fn` (its input x_t and the clipped x0 it returns), the mask and the output image before
quantisation. Two imports the called code never uses stand in as empty modules (`torchvision.utils.make_grid`,
and `lpips`, whose score is only logged).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import types

import numpy as np

from tools import make_fixtures as mf
from tools.reference import importable

SIZE = 16
# The script at its own settings (diffpir_inpaint.npz), and at settings it does not cover, its `main` recompiled
# with other values for its header assignments (iter_num, lambda_, zeta, noise_level_img): 15 steps on 24 x 24
# images with noise (its deblurring script's 12.75 / 255, lambda and zeta of its deblurring runs), and 30 steps
# with lighter noise.
CASES = {
    "inpaint": dict(size=SIZE, settings={}),
    "inpaint24_15": dict(size=24, settings={"iter_num": 15, "lambda_": 7.0, "zeta": 0.3, "noise_level_img": 12.75 / 255}),
    "inpaint16_30": dict(size=SIZE, settings={"iter_num": 30, "lambda_": 2.0, "zeta": 0.25, "noise_level_img": 0.02}),
}
_ORIGINALS = {}


def with_settings(script, settings):
    """The script's `main` recompiled from its own source with `settings` in place of the values its header
    assigns (the script keeps its settings as assignments at the top of `main`)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(script))
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    found = set()
    for node in ast.walk(main):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in settings:
            node.value = ast.copy_location(ast.Constant(settings[node.targets[0].id]), node.value)
            found.add(node.targets[0].id)
    if found != set(settings):
        raise SystemExit(f"the script's main assigns no {sorted(set(settings) - found)}")
    namespace = dict(vars(script))
    exec(compile(ast.Module(body=[main], type_ignores=[]), script.__file__, "exec"), namespace)
    return namespace["main"]


def stub_modules():
    import torch

    torchvision = types.ModuleType("torchvision")
    utils = types.ModuleType("torchvision.utils")
    utils.make_grid = None
    torchvision.utils = utils
    sys.modules.setdefault("torchvision", torchvision)
    sys.modules.setdefault("torchvision.utils", utils)
    lpips = types.ModuleType("lpips")

    class LPIPS(torch.nn.Module):
        def __init__(self, *a, **k):
            super().__init__()

        def forward(self, a, b):
            return torch.zeros(1, 1, 1, 1)
    lpips.LPIPS = LPIPS
    sys.modules.setdefault("lpips", lpips)


@contextlib.contextmanager
def inside(directory):
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(cwd)


def run(diffpir_path, fixtures, img, replay=None, settings=None):
    """Run the reference inpainting script on `img` (uint8 (n, n, 3)), at its own settings or with `settings`
    in place of its header values; returns what was recorded."""
    import cv2

    importable(diffpir_path)
    stub_modules()
    import main_ddpir_inpainting as script
    from guided_diffusion import script_util, unet

    cfg = json.loads(str(np.load(os.path.join(fixtures, "adm_ffhq_like.npz"))["config"]))
    record = {"x_in": [], "x0": [], "noise_level": [], "mask": [], "out": []}

    def create_model_and_diffusion(**kwargs):
        diffusion = script_util.create_gaussian_diffusion(
            steps=kwargs["diffusion_steps"], learn_sigma=kwargs["learn_sigma"], noise_schedule=kwargs["noise_schedule"],
            use_kl=kwargs["use_kl"], predict_xstart=kwargs["predict_xstart"], rescale_timesteps=kwargs["rescale_timesteps"],
            rescale_learned_sigmas=kwargs["rescale_learned_sigmas"], timestep_respacing=kwargs["timestep_respacing"])
        return unet.UNetModel(**cfg), diffusion

    # the originals, kept from the first run (a second run in the process must not wrap the wrappers)
    _ORIGINALS.setdefault("model_fn", script.utils_model.model_fn)
    _ORIGINALS.setdefault("mask_generator", script.mask_generator)
    _ORIGINALS.setdefault("tensor2uint", script.util.tensor2uint)
    model_fn = _ORIGINALS["model_fn"]

    def recording_model_fn(x, noise_level, *a, **k):
        out = model_fn(x, noise_level, *a, **k)
        record["x_in"].append(x.detach().clone())
        record["x0"].append(out.detach().clone())
        record["noise_level"].append(float(noise_level))
        return out

    mask_generator = _ORIGINALS["mask_generator"]

    class RecordingMaskGenerator(mask_generator):
        def __init__(self, *a, **k):
            k.setdefault("image_size", img.shape[0])      # the script leaves it at its default, 256
            super().__init__(*a, **k)

        def __call__(self, img_tensor):
            mask = super().__call__(img_tensor)
            record["mask"].append(mask.clone())
            return mask

    tensor2uint = _ORIGINALS["tensor2uint"]

    def recording_tensor2uint(x):
        record["out"].append(x.detach().clone())
        return tensor2uint(x)

    script.create_model_and_diffusion = create_model_and_diffusion
    script.utils_model.model_fn = recording_model_fn
    script.mask_generator = RecordingMaskGenerator
    script.util.tensor2uint = recording_tensor2uint
    with tempfile.TemporaryDirectory() as tmp, inside(tmp):
        os.makedirs("model_zoo")
        shutil.copy(os.path.join(fixtures, "adm_ffhq_like.pt"), os.path.join("model_zoo", "diffusion_ffhq_10m.pt"))
        os.makedirs(os.path.join("testsets", "demo_test"))
        cv2.imwrite(os.path.join("testsets", "demo_test", "img.png"), img[..., ::-1])   # the script reads BGR -> RGB
        with mf.recorded_randn_like(replay) as drawn:
            (with_settings(script, settings) if settings else script.main)()
    return record, [d.numpy() for d in drawn]


def main():
    args = mf.arguments(__doc__, 2, [("diffpir", "a clone of yuanzhi-zhu/DiffPIR")]).parse_args()
    mf.start(args)

    import torch

    fixtures = os.path.abspath(args.fixtures)
    for name, case in CASES.items():
        old = mf.read(args.reuse, f"diffpir_{name}.npz")
        n, settings = case["size"], case["settings"]
        if old is not None:
            img, replay = old["img"], [np.asarray(a) for a in old["randn"]]
        else:
            img, replay = np.random.default_rng(args.seed).integers(0, 256, (n, n, 3)).astype(np.uint8), None
            torch.manual_seed(args.seed)
        record, drawn = run(args.diffpir, fixtures, img, replay, settings)
        nl = settings.get("noise_level_img", 0.0)
        spec = {"iter_num": settings.get("iter_num", 20), "lambda": settings.get("lambda_", 1.0),
                "zeta": settings.get("zeta", 1.0), "sigma": max(0.001, nl), "skip_type": "quad",
                "model": "adm_ffhq_like", **({"noise_level_img": nl} if nl else {})}
        arrays = dict(img=img, mask=record["mask"][0].numpy(), randn=np.stack(drawn),
                      x_in=np.concatenate([x.numpy() for x in record["x_in"]]),
                      x0=np.concatenate([x.numpy() for x in record["x0"]]),
                      noise_level=np.asarray(record["noise_level"], np.float64), out=record["out"][0].numpy(),
                      spec=np.array(json.dumps(spec)))
        if nl:      # y's noise as the script draws it: numpy seeded 0 just before, N(0, (2 nl)^2) on [-1, 1]
            np.random.seed(0)
            arrays["y_noise"] = np.random.normal(0, nl * 2, (n, n, 3))
        np.savez_compressed(os.path.join(args.out, f"diffpir_{name}.npz"), **arrays)
        print(f"wrote diffpir_{name}.npz to {args.out}: {len(record['x_in'])} network calls, {len(drawn)} draws")
    if args.compare:
        mf.compare(args.out, args.compare)


if __name__ == "__main__":
    main()
