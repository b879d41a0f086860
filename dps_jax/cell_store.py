"""The comparison's cell store: one finished cell per (task, method), read back as untrusted input.

A cell is `cells/<task>__<method>.json` (its numbers, the identity it was computed with, a sha256 digest) and,
unless the method does not apply to the task, `<task>__<method>.npz` (the reconstruction of every image,
float16 (N, H, W, C)). The npz is written before the JSON that marks the cell done, each atomically, so an
interrupted comparison leaves finished cells and nothing half-written: the same command resumes. A cell in
progress keeps the images it has done in `<task>__<method>.partial.json` / `.npz` (the same checks, its identity
included; written at most once a minute), so a long cell resumes at its next image.

Reading a cell checks, before it is used: the file sizes (a JSON of at most MAX_JSON_BYTES, an npz no
larger than its array can need), that the JSON parses to an object, its digest, its identity, the types and
finiteness of its numbers, and the npz's one member: `samples`, float16, of the expected shape, finite, read
through its header without unpickling and never past the bytes the shape needs. A cell that fails any check
is named with the reason and recomputed.
"""

from __future__ import annotations

import hashlib
import io as _io
import json
import math
import os
import zipfile
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from dps_jax import io
from dps_jax.models.msgpack_io import shorten

MAX_JSON_BYTES = 64 << 20          # a cell of 256 x 256 x 3 images keeps one shown sample: a few MB
NPZ_OVERHEAD = 1 << 16


class CellError(ValueError):
    """A stored cell that cannot be used."""


def samples_path(cell_path: str) -> str:
    return cell_path[:-len(".json")] + ".npz"


def digest(cell: Dict, samples_bytes: bytes = b"") -> str:
    """sha256 of a cell's JSON (without its digest) and its reconstructions' file: a cell changed after it was
    written no longer matches."""
    body = json.dumps({k: v for k, v in cell.items() if k != "digest"}, sort_keys=True).encode()
    return hashlib.sha256(body + samples_bytes).hexdigest()


def changes(old: Dict, new: Dict, most: int = 4) -> str:
    """The fields in which two identities differ, in words ("" when none)."""
    keys = sorted(set(old) | set(new), key=lambda k: (k not in new, k))
    diffs = [f"{k} {shorten(repr(old.get(k, '(unset)')), 60)} -> {shorten(repr(new.get(k, '(unset)')), 60)}"
             for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs[:most]) + (f"; and {len(diffs) - most} more" if len(diffs) > most else "")


def write(path: str, cell: Dict, samples: Optional[np.ndarray]) -> Dict:
    """Store a cell (its digest added; returned) and its reconstructions (N, H, W, C), npz first."""
    data = b""
    if samples is not None:
        buf = _io.BytesIO()
        np.savez_compressed(buf, samples=np.asarray(samples).astype(np.float16))
        data = buf.getvalue()
    cell = {**cell, "digest": digest(cell, data)}
    if samples is not None:
        io.atomic_write(samples_path(path), data)
    io.atomic_write(path, json.dumps(cell).encode())
    return cell


def _read_bounded(path: str, limit: int, what: str) -> bytes:
    if not os.path.isfile(path):
        raise CellError(f"its {what} is missing or not a file")
    size = os.path.getsize(path)
    if size > limit:
        raise CellError(f"its {what} has {size} bytes, more than the {limit} it can need")
    with open(path, "rb") as f:
        return f.read(limit + 1)


def parse_samples(data: bytes, shape: Sequence[int]) -> np.ndarray:
    """The float32 reconstructions (shape) of an npz's bytes, checked as the module docstring says."""
    shape = tuple(int(s) for s in shape)
    need = math.prod(shape) * 2
    try:
        with zipfile.ZipFile(_io.BytesIO(data)) as z:
            names = z.namelist()
            if names != ["samples.npy"]:
                raise CellError(f"its npz holds {str(names)[:80]}, not one array 'samples'")
            info = z.getinfo("samples.npy")
            if info.file_size > need + NPZ_OVERHEAD:
                raise CellError(f"its npz declares {info.file_size} bytes, more than {need} samples can need")
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                stored_shape, fortran, dtype = read_header(f)
                if dtype != np.float16 or tuple(stored_shape) != shape or fortran:
                    raise CellError(f"its samples are {dtype} {tuple(stored_shape)}, expected float16 {shape}")
                raw = f.read(need + 1)
    except CellError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, RuntimeError, NotImplementedError) as e:
        raise CellError(f"its npz is unreadable ({type(e).__name__})") from None
    if len(raw) != need:
        raise CellError(f"its npz holds {len(raw)} bytes of samples, expected {need}")
    samples = np.frombuffer(raw, np.float16).reshape(shape).astype(np.float32)
    if not np.isfinite(samples).all():
        raise CellError("its samples hold NaN or Inf")
    return samples


def load_samples(path: str, shape: Sequence[int]) -> np.ndarray:
    """The reconstructions of the cell at `path` (its .json path), (N, H, W, C) float32; CellError naming
    the file if they cannot be used."""
    need = math.prod(shape) * 2
    try:
        return parse_samples(_read_bounded(samples_path(path), 2 * need + NPZ_OVERHEAD, "npz"), shape)
    except CellError as e:
        raise CellError(f"cell {os.path.basename(path)}: {e}") from None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_cell(cell: Dict, num_images: int) -> None:
    """The fields the table reads, typed and finite (CellError naming the first that is not)."""
    if "unsupported" in cell:
        if not isinstance(cell["unsupported"], str):
            raise CellError("its n/a reason is not text")
        return
    for key in ("task", "method"):
        if not isinstance(cell.get(key), str):
            raise CellError(f"its {key} is not text")
    if cell.get("num_images") != num_images:
        raise CellError(f"it holds {str(cell.get('num_images'))[:20]} images, expected {num_images}")
    # cpu_seconds_per_image: checked where present (cells written before it was kept have none)
    for key in ("nfe", "samples_per_image", "seconds_per_image", "compile_seconds") + tuple(
            k for k in ("cpu_seconds_per_image",) if k in cell):
        if not _finite(cell.get(key)) or cell[key] < 0:
            raise CellError(f"its {key} is {str(cell.get(key))[:20]}, not a finite number >= 0")
    metrics = cell.get("metrics")
    if not isinstance(metrics, dict) or "psnr" not in metrics:
        raise CellError("it has no metrics")
    for name, value in metrics.items():
        if not isinstance(value, dict) or not all(_finite(value.get(k)) for k in ("mean", "se")):
            raise CellError(f"its metric {str(name)[:20]} is not a finite mean and standard error")
    rows = cell.get("per_image")
    if not isinstance(rows, list) or len(rows) != num_images or not all(
            isinstance(r, dict) and all(_finite(v) for v in r.values()) for r in rows):
        raise CellError(f"its per-image metrics are not {num_images} rows of finite numbers")


def partial_path(cell_path: str) -> str:
    """Where a cell in progress keeps the images it has done: `<task>__<method>.partial.json` (and .npz)."""
    return cell_path[:-len(".json")] + ".partial.json"


def read_partial(path: str, identity: Dict, shape: Sequence[int]) -> Tuple[Optional[Dict], Optional[np.ndarray], str]:
    """(the progress stored at `path`, its reconstructions (N, H, W, C; the first `done` filled), "") when it is
    intact and was computed with `identity`; else (None, None, why it is not used)."""
    try:
        part = json.loads(_read_bounded(path, MAX_JSON_BYTES, "JSON"))
        if not isinstance(part, dict):
            raise CellError("its JSON is not an object")
        samples = _read_bounded(samples_path(path), 2 * math.prod(shape) * 2 + NPZ_OVERHEAD, "npz")
        if part.get("digest") != digest(part, samples):
            raise CellError("changed after it was written (its digest does not match)")
        differs = changes(part.get("identity") if isinstance(part.get("identity"), dict) else {}, identity)
        if differs:
            raise CellError(f"computed with other settings: {differs}")
        done, rows = part.get("done"), part.get("rows")
        if not (isinstance(done, int) and 0 < done < int(shape[0]) and isinstance(rows, list) and len(rows) == done
                and all(isinstance(r, dict) and all(_finite(v) for v in r.values()) for r in rows)
                and _finite(part.get("seconds")) and part["seconds"] >= 0
                and ("cpu_seconds" not in part or (_finite(part["cpu_seconds"]) and part["cpu_seconds"] >= 0))):
            raise CellError("its progress is not a count of images with finite per-image metrics")
        return part, parse_samples(samples, shape), ""
    except (CellError, ValueError, RecursionError) as e:
        return None, None, str(e) if isinstance(e, CellError) else f"its JSON is unreadable ({type(e).__name__})"
    except OSError as e:
        return None, None, f"unreadable ({type(e).__name__})"


def remove_partial(cell_path: str) -> None:
    for p in (partial_path(cell_path), samples_path(partial_path(cell_path))):
        if os.path.lexists(p):
            os.remove(p)


def read(path: str, identity: Dict, shape: Sequence[int]) -> Tuple[Optional[Dict], str]:
    """(the cell stored at `path`, "") when it is intact, computed with `identity` and holds reconstructions
    of `shape` (N, H, W, C); else (None, why it is recomputed)."""
    try:
        text = _read_bounded(path, MAX_JSON_BYTES, "JSON")
        try:
            cell = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise CellError(f"its JSON is unreadable ({type(e).__name__})") from None
        if not isinstance(cell, dict):
            raise CellError(f"its JSON is a {type(cell).__name__}, not an object")
        samples = b""
        if "unsupported" not in cell:
            samples = _read_bounded(samples_path(path), 2 * math.prod(shape) * 2 + NPZ_OVERHEAD, "npz")
        if cell.get("digest") != digest(cell, samples):
            raise CellError("changed after it was written (its digest does not match)")
        if not isinstance(cell.get("identity"), dict):
            raise CellError("written by an earlier version, with no identity")
        differs = changes(cell["identity"], identity)
        if differs:
            raise CellError(f"computed with other settings: {differs}")
        check_cell(cell, int(shape[0]))
        if samples:
            parse_samples(samples, shape)
    except CellError as e:
        return None, str(e)
    except OSError as e:
        return None, f"unreadable ({type(e).__name__})"
    return cell, ""
