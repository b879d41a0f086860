"""Import the published guided-diffusion / DPS PyTorch checkpoints into dps_jax, without torch.

    python -m checkpoints_convert ffhq_10m.pt ffhq256.msgpack --model ffhq256
"""

from checkpoints_convert.adm import convert_state_dict, torch_key
from checkpoints_convert.torch_reader import CheckpointError, load_state_dict

__all__ = ["convert", "convert_state_dict", "load_state_dict", "torch_key", "CheckpointError"]


def convert(src: str, dst: str, config, dtype="float32") -> None:
    """Read the torch checkpoint `src`, map it onto `config`'s UNet, write `dst` atomically."""
    import numpy as np
    from dps_jax.models.checkpoint import save_checkpoint

    state = load_state_dict(src)
    params = convert_state_dict(state, config, dtype=np.dtype(dtype))
    save_checkpoint(dst, params, config, extra={"source": str(src)})
