"""What the model configs stored inside dps_jax checkpoints share: JSON in and out, unknown keys refused
by name (a config is read from files users hand us)."""

from __future__ import annotations

import dataclasses
import json


class JsonConfig:
    """Mixin for a frozen dataclass of model arguments; `KIND` and `WHAT` name it in errors."""
    KIND = "model"
    WHAT = "model arguments"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict):
        if not isinstance(d, dict):
            raise ValueError(f"a {cls.KIND} config must be a JSON object of {cls.WHAT}, got a {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.KIND} config keys {unknown}; expected some of {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, s: str):
        return cls.from_dict(json.loads(s))
