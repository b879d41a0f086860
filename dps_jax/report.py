"""Figures a person can read, drawn with Pillow: labelled image grids, a grey scale bar, a line plot.

    labelled_grid(rows, row_labels, column_labels, path, scale=4, bars={})   # tiles (H, W, C) in [-1, 1]
    line_plot({"sample 0": values, ...}, path, xlabel="step", ylabel="||y - A(x0_hat)||")

Used by the main job (each image's report.png and distance.png) and the comparison table (grid.png).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dps_jax import io

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
BLACK, WHITE, GREY = (0, 0, 0), (255, 255, 255), (128, 128, 128)


def _font():
    return ImageFont.load_default()


def _text_width(draw, text, font) -> int:
    box = draw.textbbox((0, 0), text, font=font)
    return box[2] - box[0]


def _tile(img, scale: int) -> Image.Image:
    """(H, W, C) in [-1, 1] -> an RGB tile, enlarged `scale` times (nearest)."""
    a = io.to_uint8(img)
    a = np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a
    tile = Image.fromarray(a, "RGB")
    return tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST) if scale > 1 else tile


def scale_bar(height: int, lo: float, hi: float) -> Tuple[Image.Image, int]:
    """A vertical grey bar, black at `lo` (bottom) to white at `hi` (top), with both values written beside
    it: (the image, its width)."""
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [f"{hi:.3g}", f"{lo:.3g}"]
    width = 12 + 4 + max(_text_width(probe, t, font) for t in labels) + 2
    bar = Image.new("RGB", (width, height), WHITE)
    ramp = np.linspace(255, 0, height).astype(np.uint8)[:, None].repeat(12, axis=1)
    bar.paste(Image.fromarray(np.stack([ramp] * 3, -1), "RGB"), (0, 0))
    draw = ImageDraw.Draw(bar)
    draw.rectangle([0, 0, 11, height - 1], outline=BLACK)
    draw.text((16, 0), labels[0], fill=BLACK, font=font)
    draw.text((16, height - 11), labels[1], fill=BLACK, font=font)
    return bar, width


def labelled_grid(rows: Sequence[Sequence], row_labels: Sequence[str], column_labels: Sequence[str], path: str,
                  scale: int = 4, bars: Optional[Dict[Tuple[int, int], Tuple[float, float]]] = None,
                  title: str = "") -> None:
    """A grid of image tiles with a label per row (left) and per column (top); a tile that is None is mid
    grey (n/a). `bars` {(row, column): (lo, hi)}: that tile shows a quantity rescaled to [-1, 1] (a std
    map), and a scale bar with lo and hi follows it."""
    font = _font()
    bars = bars or {}
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    shape = next(np.shape(t) for r in rows for t in r if t is not None)
    tw, th = shape[1] * scale, shape[0] * scale
    bar_w = max([scale_bar(th, *v)[1] for v in bars.values()] + [0])
    left = 6 + max([_text_width(probe, t, font) for t in row_labels] + [0])
    top = 16 + (14 if title else 0)
    cols = max(len(r) for r in rows)
    cell_w = [tw + (bar_w + 4 if any((i, j) in bars for i in range(len(rows))) else 0) for j in range(cols)]
    width = left + sum(w + 4 for w in cell_w) + 2
    height = top + len(rows) * (th + 4) + 2
    out = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((4, 2), title, fill=BLACK, font=font)
    x0 = [left + sum(w + 4 for w in cell_w[:j]) for j in range(cols)]
    for j, label in enumerate(column_labels[:cols]):
        text = label
        while _text_width(draw, text, font) > cell_w[j] and len(text) > 3:       # a long label, shortened
            text = text[:-2]
        draw.text((x0[j], top - 13), text if text == label else text[:-1] + ".", fill=BLACK, font=font)
    for i, (row, label) in enumerate(zip(rows, row_labels)):
        y = top + i * (th + 4)
        draw.text((2, y + th // 2 - 6), label, fill=BLACK, font=font)
        for j, img in enumerate(row):
            if img is None:
                draw.rectangle([x0[j], y, x0[j] + tw - 1, y + th - 1], fill=GREY)
                continue
            out.paste(_tile(img, scale), (x0[j], y))
            if (i, j) in bars:
                bar, _ = scale_bar(th, *bars[(i, j)])
                out.paste(bar, (x0[j] + tw + 4, y))
    out.save(path)


def line_plot(series: Dict[str, Sequence[float]], path: str, xlabel: str = "", ylabel: str = "",
              title: str = "", log_y: bool = True) -> None:
    """One panel: a line per series against its index + 1 (the step), the y axis logarithmic when every
    value is positive; a legend in the top right."""
    font = _font()
    w, h, ml, mb, mt, mr = 480, 300, 64, 36, 28, 12
    out = Image.new("RGB", (w, h), WHITE)
    draw = ImageDraw.Draw(out)
    values = [v for s in series.values() for v in s if math.isfinite(v)]
    if not values:
        draw.text((ml, h // 2), "no finite values", fill=BLACK, font=font)
        out.save(path)
        return
    log_y = log_y and min(values) > 0
    f = math.log10 if log_y else (lambda v: v)
    lo, hi = f(min(values)), f(max(values))
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    n = max(len(s) for s in series.values())
    px = lambda i: ml + (i / max(n - 1, 1)) * (w - ml - mr)
    py = lambda v: h - mb - (f(v) - lo) / (hi - lo) * (h - mb - mt)
    draw.rectangle([ml, mt, w - mr, h - mb], outline=BLACK)
    draw.text((ml, 8), title, fill=BLACK, font=font)
    for k in range(5):                                     # y ticks, evenly spaced in the axis' scale
        t = lo + k * (hi - lo) / 4
        v = 10 ** t if log_y else t
        draw.line([ml - 4, py(v), ml, py(v)], fill=BLACK)
        draw.text((2, py(v) - 6), f"{v:.3g}", fill=BLACK, font=font)
    for i in sorted({0, n - 1, (n - 1) // 2}):
        draw.line([px(i), h - mb, px(i), h - mb + 4], fill=BLACK)
        draw.text((px(i) - 6, h - mb + 6), f"{i + 1}", fill=BLACK, font=font)
    draw.text((w // 2 - 20, h - 14), xlabel, fill=BLACK, font=font)
    draw.text((ml + 4, mt + 4), ylabel + (" (log)" if log_y else ""), fill=BLACK, font=font)
    for k, (label, s) in enumerate(series.items()):
        c = COLORS[k % len(COLORS)]
        pts = [(px(i), py(v)) for i, v in enumerate(s) if math.isfinite(v)]
        if len(pts) > 1:
            draw.line(pts, fill=c, width=2)
        draw.text((w - mr - 90, mt + 4 + 12 * k), label, fill=c, font=font)
    out.save(path)
