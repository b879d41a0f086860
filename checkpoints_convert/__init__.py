"""Import the published guided-diffusion / DPS PyTorch checkpoints into dps_jax, without torch.

    python -m checkpoints_convert ffhq_10m.pt ffhq256.msgpack --model ffhq256
    python -m checkpoints_convert GOPRO_wVAE.pth gopro_kernel.msgpack --model gopro_wvae   # nonlinear blur
    python -m checkpoints_convert diffunet_ffhq.pt ffhq256.msgpack --model ffhq256 --drop-unexpected 'sqrt_*'
                                                                   # deepinv's DiffUNet: its two schedule buffers

The feature networks of the metrics (LPIPS, FID's Inception): `python -m checkpoints_convert.metrics`. Other
families have a module each: `.diffusers` (UNet2DModel folders), `.edm` (EDM network pickles), `.score_sde`
(score_sde_pytorch checkpoints), `.stylegan2` (rosinality's StyleGAN2 generators).
"""

import os

from checkpoints_convert.adm import convert_state_dict, torch_key
from checkpoints_convert.torch_reader import CheckpointError, load_state_dict

__all__ = ["convert", "convert_state_dict", "load_state_dict", "torch_key", "CheckpointError"]


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:     # b does not exist yet
        return False


def convert(src: str, dst: str, config, dtype="float32", key=None, strip_prefix=None,
            allow_nonfinite: bool = False, drop_unexpected=()) -> None:
    """Read the torch checkpoint `src`, map it onto `config`'s model (a UNetConfig or a KernelWizardConfig),
    write `dst` atomically.

    Never overwrites `src` (also through links). Each weight is converted as the file's bytes are
    released and written one at a time, so the peak memory is about one copy of the weights.
    `drop_unexpected`: glob patterns of extra keys to leave out (`mapping.convert_mapped`).
    """
    import numpy as np
    from checkpoints_convert import kernel_wizard
    from dps_jax.models import checkpoint, kernel_wizard as kw

    if _same_file(src, dst):
        raise CheckpointError(f"the output {dst} is the input checkpoint; choose another output path")
    blur_model = isinstance(config, kw.KernelWizardConfig)
    state = load_state_dict(src, key=key, strip_prefix=strip_prefix)
    params = (kernel_wizard.convert_state_dict if blur_model else convert_state_dict)(
        state, config, dtype=np.dtype(dtype), consume=True, allow_nonfinite=allow_nonfinite,
        drop_unexpected=tuple(drop_unexpected))
    del state
    checkpoint.save_checkpoint(dst, params, config, extra={"source": str(src)},
                               fmt=kw.FORMAT if blur_model else checkpoint.FORMAT)
