"""Regenerate tests/fixtures/edm_songunet_small.pkl / .npz from a clone of NVlabs/edm (torch besides; seconds).

    python -m tools.make_edm_fixtures --edm EDM_PATH --out tests/fixtures

An `EDMPrecond` around a `SongUNet` (DDPM++ layout: positional noise embedding, standard encoder and decoder,
[1, 1] resampling filter, attention at 4 x 4) at 8 x 8 x 3 and 8 base channels, its parameters and buffers set to
`checkpoints_convert.mapping.project_random_state_dict(shapes, 21)`, pickled the way EDM's training loop writes its
network snapshots (`pickle.dump(dict(ema=net), f)`, each class's source carried inside by EDM's persistence).
The .npz holds the state_dict's keys and shapes (JSON), the recorded constructor arguments, and the network's
denoiser output D(x; sigma) on fixed inputs, for the Flax port that reads it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle

import numpy as np

from tools.reference import importable, project_random_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KWARGS = dict(img_resolution=8, img_channels=3, label_dim=0, model_type="SongUNet", model_channels=8,
              channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], embedding_type="positional",
              encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1])
SEED = 21
SIGMAS = np.array([0.3, 7.5], np.float32)
# Two more networks, not pickled (the test builds their weights from the same seed and the port's key table):
# NCSN++'s layout under VEPrecond (Fourier noise embedding, residual encoder, [1, 3, 3, 1] filter) and DDPM++ under
# VPPrecond.
MORE = {
    "ncsnpp_ve": ("VEPrecond", dict(img_resolution=8, img_channels=3, label_dim=0, model_type="SongUNet",
                                    model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                                    embedding_type="fourier", encoder_type="residual", decoder_type="standard",
                                    channel_mult_noise=2, resample_filter=[1, 3, 3, 1])),
    "ddpmpp_vp": ("VPPrecond", dict(KWARGS)),
    # ADM (DhariwalUNet), class-conditional (5 classes, read at class 3), two attention heads at 4 x 4
    "adm_cond": ("EDMPrecond", dict(img_resolution=8, img_channels=3, label_dim=5, model_type="DhariwalUNet",
                                    model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])),
}
CLASS_LABEL = 3
# The published networks' configurations, as EDM's train.py builds them from the options its README lists (for the
# parameter counts): --arch ddpmpp / ncsnpp, --cres 1,2,2,2 at 64 x 64, augmentation on (augment_dim 9).
_ARCH = {"ddpmpp": dict(embedding_type="positional", encoder_type="standard", decoder_type="standard",
                        channel_mult_noise=1, resample_filter=[1, 1]),
         "ncsnpp": dict(embedding_type="fourier", encoder_type="residual", decoder_type="standard",
                        channel_mult_noise=2, resample_filter=[1, 3, 3, 1])}
PUBLISHED = {f"edm-{data}-uncond-{'vp' if arch == 'ddpmpp' else 've'}":
             dict(img_resolution=res, img_channels=3, label_dim=0, model_type="SongUNet", model_channels=128,
                  channel_mult=cres, augment_dim=9, **_ARCH[arch])
             for data, res, cres in (("cifar10-32x32", 32, [2, 2, 2]), ("ffhq-64x64", 64, [1, 2, 2, 2]))
             for arch in ("ddpmpp", "ncsnpp")}
# ImageNet 64 (--cond=1 --arch=adm --augment=0): DhariwalUNet's own defaults besides these
PUBLISHED["edm-imagenet-64x64-cond-adm"] = dict(img_resolution=64, img_channels=3, label_dim=1000,
                                                model_type="DhariwalUNet", model_channels=192, channel_mult=[1, 2, 3, 4])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edm", required=True, help="a clone of NVlabs/edm")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    args = ap.parse_args()
    importable(args.edm)            # EDM's modules import each other by top-level name (training, torch_utils, dnnlib)
    import torch
    from training import networks

    torch.manual_seed(SEED)         # NCSN++'s Fourier frequencies are drawn by its constructor

    net = networks.EDMPrecond(**KWARGS).eval()
    state = net.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    weights = project_random_state_dict(shapes, SEED)
    weights = {k: (w if not k.endswith("resample_filter") else state[k].numpy()) for k, w in weights.items()}
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(w)) for k, w in weights.items()})
    buf = io.BytesIO()
    pickle.dump(dict(ema=net), buf)
    with open(os.path.join(args.out, "edm_songunet_small.pkl"), "wb") as f:
        f.write(buf.getvalue())
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        d = net(torch.from_numpy(x), torch.from_numpy(SIGMAS)).numpy()
    out = dict(keys=np.array(json.dumps(shapes)), init_kwargs=np.array(json.dumps(KWARGS)),
               x=x.transpose(0, 2, 3, 1), sigma=SIGMAS, denoised=d.transpose(0, 2, 3, 1),
               resample_filter_keys=np.array(json.dumps(sorted(k for k in shapes if k.endswith("resample_filter")))))
    for name, (precond, kwargs) in MORE.items():
        other = getattr(networks, precond)(**kwargs).eval()
        st = other.state_dict()
        sh = {k: tuple(v.shape) for k, v in st.items()}
        w = project_random_state_dict(sh, SEED)
        w = {k: (v if not k.endswith(("resample_filter", "freqs")) else st[k].numpy()) for k, v in w.items()}
        other.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in w.items()})
        labels = None
        if kwargs.get("label_dim"):
            labels = torch.nn.functional.one_hot(torch.full((2,), CLASS_LABEL), kwargs["label_dim"]).float()
        with torch.no_grad():
            dd = other(torch.from_numpy(x), torch.from_numpy(SIGMAS), class_labels=labels).numpy()
        out.update({f"{name}/keys": np.array(json.dumps(sh)), f"{name}/init_kwargs": np.array(json.dumps(kwargs)),
                    f"{name}/class_label": np.array(CLASS_LABEL if kwargs.get("label_dim") else -1),
                    f"{name}/precond": np.array(precond), f"{name}/denoised": dd.transpose(0, 2, 3, 1)})
        out.update({f"{name}/buffer/{k}": st[k].numpy() for k in sh if k.endswith(("resample_filter", "freqs"))})
    counts = {name: sum(p.numel() for p in networks.EDMPrecond(**kw).parameters()) for name, kw in PUBLISHED.items()}
    out["published_configs"] = np.array(json.dumps(PUBLISHED))
    out["published_parameters"] = np.array(json.dumps(counts))
    print(counts)
    np.savez_compressed(os.path.join(args.out, "edm_songunet_small.npz"), **out)
    print(f"{len(shapes)} tensors, {sum(int(np.prod(s)) for s in shapes.values())} values, pickle {len(buf.getvalue())} bytes")


if __name__ == "__main__":
    main()
