"""The task configs (`configs/<task>.py`): installed as the package `dps_jax.configs`, so the commands find them
from any folder; `python -m dps_jax.main --help` lists them."""
