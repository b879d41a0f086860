"""Importing the modules of a reference repository's clone (the fixture scripts and the speed benchmark).

A clone is not a package: its code imports its own top-level modules (`guided_diffusion`, `util`,
`sampler`, ...). `importable(root)` lets those names import from the clone without putting it on
`sys.path`: a finder at the end of `sys.meta_path` resolves a top-level name from `root` only when nothing
installed (nor the project) has it, so a clone can never shadow a real package.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys


class CloneFinder(importlib.abc.MetaPathFinder):
    """Top-level modules and packages of one folder, as a last resort."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def find_spec(self, name, path=None, target=None):
        if path is not None:                 # a submodule: its package's own __path__ finds it
            return None
        return importlib.machinery.PathFinder.find_spec(name, [self.root])


def importable(root: str) -> CloneFinder:
    """Make the top-level modules of the clone at `root` importable (once per root); returns its finder."""
    if not os.path.isdir(root):
        raise SystemExit(f"reference clone not found: {root}")
    for finder in sys.meta_path:
        if isinstance(finder, CloneFinder) and finder.root == os.path.abspath(root):
            return finder
    finder = CloneFinder(root)
    sys.meta_path.append(finder)
    return finder


def no_cuda_build() -> None:
    """Make torch's C++/CUDA extension build a no-op. score_sde_pytorch's and stylegan2-pytorch's `op` packages
    compile their kernels when imported; on a CPU their functions take the pure-torch paths, so the compiled
    module is never used and no compiler is needed."""
    import torch.utils.cpp_extension

    torch.utils.cpp_extension.load = lambda *a, **k: None


def narrowed(generator_class, divisor: int):
    """rosinality's StyleGAN2 `Generator` (or a subclass, e.g. BKS's copy) with its channel table divided by
    `divisor`: the class fixes its table, so a subclass divides it as the constructor sets it."""
    class Narrow(generator_class):
        def __setattr__(self, name, value):
            if name == "channels":
                value = {r: c // divisor for r, c in value.items()}
            super().__setattr__(name, value)
    return Narrow


def project_random_state_dict(shapes, seed: int):
    """`checkpoints_convert.mapping.random_state_dict` in an environment without jax (a reference's, with torch):
    the module is imported without its package's __init__, which needs jax."""
    import types

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pkg = types.ModuleType("checkpoints_convert")
    pkg.__path__ = [os.path.join(root, "checkpoints_convert")]
    sys.modules.setdefault("checkpoints_convert", pkg)
    from checkpoints_convert.mapping import random_state_dict
    return random_state_dict(shapes, seed)
