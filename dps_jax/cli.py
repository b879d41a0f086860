"""The command line of every config-file command (the main job, the evaluation command, the trainers).

    python -m dps_jax.main --config=configs/<task>.py[:preset] [--config.<key>=<value> ...]
                           [--print_config] [--help]

One helper for all of them, so they behave alike:
- `--help` / `-h` prints the command's usage, its flags and, with `--config`, every field of that config
  with its value; without it, the configs there are.
- `--print_config` prints the resolved config (after the overrides) and exits.
- A config path that does not exist lists the configs that do; `configs/<name>.py` is also looked up in the
  installed package, so the commands work from any folder after `pip install .`.
- A bare flag that is a config field (`--num_samples=2`) suggests `--config.num_samples`; a mistyped key
  suggests the nearest real ones.
- Every number of the resolved config is checked (`config_check`) before the command runs.
- Every error in the inputs is one line `error: ...` on stderr and exit status 1.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from typing import Callable, List, Optional, Sequence

from dps_jax import config_check
from dps_jax.config_check import flatten

# Errors in the inputs that a command reports as one line (the checkpoint formats' errors derive from them).
INPUT_ERRORS = (ValueError, OSError, TypeError, KeyError)
MAX_LINE = 1000


class UsageError(ValueError):
    """A problem with the command line itself."""


def one_line(e) -> str:
    """`error: <message>` on one line, whatever the message (ml_collections wraps errors raised inside a
    config file in their whole traceback: the last line is the message)."""
    text = str(e)
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    if "Traceback (most recent call last)" in text:
        head = text.split("Error whilst parsing config file")[0].rstrip(": ")
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        text = f"{head}: {last}" if head else last
    text = text.replace("\\n", " ").replace('\\"', '"').replace("\\'", "'")
    text = " ".join(text.split())
    # a bound whatever a message echoes (a value of 100,000 characters)
    return "error: " + (text if len(text) <= MAX_LINE else text[:MAX_LINE - 3] + "...")


def config_root() -> str:
    """The folder of the task configs: the repository's `configs/` (the package `dps_jax.configs`)."""
    from dps_jax import config_base
    return config_base.CONFIG_DIR


def available(subdir: str = "") -> List[str]:
    """The config files of `configs/<subdir>`, as `configs/...` paths."""
    folder = os.path.join(config_root(), subdir)
    names = sorted(f for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_")) \
        if os.path.isdir(folder) else []
    return ["/".join(p for p in ("configs", subdir, f) if p) for f in names]


def resolve(path: str, subdir: str = "") -> str:
    """The file of a `--config` path: as given, or `configs/...` inside the installed package."""
    if os.path.isfile(path):
        return path
    parts = os.path.normpath(path).split(os.sep)
    if "configs" in parts:
        inside = os.path.join(config_root(), *parts[parts.index("configs") + 1:])
        if os.path.isfile(inside):
            return inside
    raise UsageError(f"config file {path} not found; the configs are: {', '.join(available(subdir)) or 'none'}")


def load_config(spec: str, subdir: str = ""):
    """The ConfigDict of `path[:preset]`: the file's get_config(preset)."""
    path, _, preset = spec.partition(":")
    path = resolve(path, subdir)
    name = "dps_jax_cli_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UsageError(f"config file {path} does not parse: {e.msg} (line {e.lineno})") from None
    if not hasattr(module, "get_config"):
        raise UsageError(f"config file {path} has no get_config()")
    return module.get_config(*([preset] if preset else []))


def _split_flag(arg: str):
    """('name', 'value' or None) of `--name=value` / `--name`; None for a non-flag."""
    if not arg.startswith("-") or arg in ("-", "--"):
        return None
    name, eq, value = arg.lstrip("-").partition("=")
    return name, (value if eq else None)


def _suggest(key: str, keys: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    if not close:      # a leaf name alone (`scale`): the keys that end with it
        leaf = key.split(".")[-1]
        close = [k for k in keys if k.split(".")[-1] == leaf][:3]
    return f"; did you mean {', '.join('--config.' + c for c in close)}?" if close else ""


# Keys that moved, and where to: the DDPM/DDIM choice, eta and the respacing are each solver's options.
MOVED = {"sampler.name": "solver.<solver>.sampler", "sampler.eta": "solver.<solver>.eta",
         "sampler.respacing": "solver.<solver>.respacing"}


def check_flags(argv: Sequence[str], cfg, extra: Sequence[str]) -> None:
    """Refuse, with a suggestion, a bare flag that names a config field and a `--config.<key>` that is no
    field; the rest is absl's and ml_collections' to parse."""
    keys = list(flatten(cfg))
    sections = {k.rsplit(".", 1)[0] for k in keys if "." in k}
    known = {"config", "print_config", "help", "h", *extra}
    for arg in argv:
        split = _split_flag(arg)
        if split is None:
            continue
        name = split[0]
        if name.startswith("config."):
            key = name[len("config."):]
            if key in MOVED and key not in keys:
                raise UsageError(f"--config.{key} is now --config.{MOVED[key]}, an option of each solver")
            if key not in keys and key not in sections:
                raise UsageError(f"--config.{key}: the config has no field {key!r}{_suggest(key, keys)}")
        elif name not in known:
            hint = _suggest(name, keys)
            raise UsageError(f"unknown flag --{name}{hint or '; the config is set with --config.<key>=<value> (see --help)'}")


def usage(program: str, doc: str, extra: dict, cfg=None, spec: str = "", subdir: str = "") -> str:
    flags_shown = "".join(f" --{k}=..." for k in extra)
    lines = [doc.strip(), "", f"usage: python -m {program} --config=FILE[:preset] [--config.<key>=<value> ...]"
             f"{flags_shown} [--print_config] [--help]", "",
             "flags:",
             "  --config=FILE[:preset]   the config file (`configs/...`)",
             "  --config.<key>=<value>   set one field of it",
             *(f"  --{k:<23} {v}" for k, v in extra.items()),
             "  --print_config           print the resolved config and exit",
             "  --help, -h               this text"]
    if cfg is None:
        lines += ["", "configs:", *(f"  {c}" for c in available(subdir)),
                  "", f"`python -m {program} --config=FILE --help` lists that config's fields."]
    else:
        lines += ["", f"fields of {spec} (--config.<key>=<value>):"]
        lines += [f"  {k} = {v!r}" for k, v in flatten(cfg).items()]
    return "\n".join(lines) + "\n"


def cpu_compile_flags() -> None:
    """Ask XLA:CPU for its older fusion code generation (not the MLIR fusion emitters) unless XLA_FLAGS says
    otherwise: the same programs compile sooner (the phase-retrieval quick start: 8.2 s against 9.8 s, samples
    bit-identical, steps as fast; docs/benchmarks.md, "Compiling on a CPU"). Only before jax is imported; GPU
    runs ignore the flag."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "jax" not in sys.modules and "xla_cpu_use_fusion_emitters" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_use_fusion_emitters=false").strip()


def main(argv: Sequence[str], *, program: str, doc: str, run: Callable, subdir: str = "",
         extra: Optional[dict] = None, stream=None, out=None) -> int:
    """Parse `argv` (argv[0] the program) and call `run(config, overrides=[keys set on the command line],
    **extra flag values)`; returns the exit status. `extra`: {flag name: help} of the command's other string
    flags (a trainer's --workdir), each required."""
    cpu_compile_flags()
    stream = stream or sys.stderr
    out = out or sys.stdout
    extra = dict(extra or {})
    args = list(argv[1:])
    try:
        spec, rest = None, []
        i = 0
        while i < len(args):           # --config=FILE or --config FILE
            a = args[i]
            if a.startswith("--config="):
                spec = a[len("--config="):]
            elif a == "--config" and i + 1 < len(args):
                spec, i = args[i + 1], i + 1
            else:
                rest.append(a)
            i += 1
        wants_help = any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in rest)
        if spec is None:
            if wants_help:
                out.write(usage(program, doc, extra, subdir=subdir))
                return 0
            raise UsageError(f"--config is required, e.g. --config={(available(subdir) or ['configs/...'])[0]}")
        cfg = load_config(spec, subdir)
        if wants_help:
            out.write(usage(program, doc, extra, cfg, spec, subdir))
            return 0
        check_flags(rest, cfg, extra)
        cfg, values, overrides = parse(rest, cfg, extra)
        if "--print_config" in rest or "--print_config=true" in [a.lower() for a in rest]:
            out.write(cfg.to_json_best_effort(indent=2) + "\n")
            return 0
        missing = [k for k, v in values.items() if v is None]
        if missing:
            raise UsageError(f"--{missing[0]} is required")
        cfg = config_check.check(cfg, overrides)          # every number, before anything is built
        run(cfg, overrides=overrides, **values)
    except INPUT_ERRORS as e:
        stream.write(one_line(e) + "\n")
        return 1
    except KeyboardInterrupt as e:       # one line: what is kept, if the command says (a resumable store)
        tty = bool(getattr(stream, "isatty", lambda: False)())
        stream.write(("\n" if tty else "") + one_line(f"interrupted{'; ' + str(e) if str(e) else ''}") + "\n")
        return 130
    return 0


def parse(rest: Sequence[str], cfg, extra: dict):
    """(the config with the `--config.<key>` overrides applied, {extra flag: value}, the overridden keys)."""
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_dict("config", cfg, flag_values=fv, lock_config=True,
                                             sys_argv=["prog", *rest])
    defined = {k: flags.DEFINE_string(k, None, h, flag_values=fv) for k, h in extra.items()}
    flags.DEFINE_boolean("print_config", False, "print the resolved config", flag_values=fv)
    try:
        remaining = fv(["prog", *rest])
    except flags.Error as e:
        raise UsageError(str(e)) from None
    if len(remaining) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(remaining[1:])}")
    return holder.value, {k: f.value for k, f in defined.items()}, list(config_flags.get_override_values(fv["config"]))
