"""Line plots for the benchmarks' figures, drawn with Pillow (no plotting library needed).

    panels([(title, {label: [(x, y), ...]}, floor_or_None), ...], "out.png", xlabel=..., ylabel=...)

Both axes are logarithmic; a dashed grey line marks each panel's floor (e.g. what exact samples score).
"""

import math

from PIL import Image, ImageDraw, ImageFont

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0), (255, 215, 0),
          (0, 128, 128), (128, 0, 0), (0, 0, 128), (255, 0, 255), (128, 128, 0), (0, 255, 127)]
W, H, MARGIN_L, MARGIN_B, MARGIN_T, MARGIN_R = 420, 300, 60, 40, 28, 10


def _ticks(lo, hi):
    """Powers of ten (and 2x, 5x when the range is short, every digit when shorter) inside [lo, hi]."""
    def within(multiples):
        return [m * 10 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                for m in multiples if lo <= m * 10 ** e <= hi]
    out = within((1, 2, 5) if math.log10(hi / lo) < 2.5 else (1,))
    return out if len(out) >= 3 else within(range(1, 10))      # a short range: every digit


def _panel(draw, ox, oy, title, series, floor, font, xlabel, ylabel, colors):
    pts = [p for s in series.values() for p in s if p[0] > 0 and p[1] > 0]     # log axes
    if not pts:
        return
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts] + ([floor] if floor else [])
    x0, x1 = min(xs) / 1.3, max(xs) * 1.3
    y0, y1 = min(ys) / 1.5, max(ys) * 1.5
    px = lambda x: ox + MARGIN_L + (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0)) * (W - MARGIN_L - MARGIN_R)
    py = lambda y: oy + H - MARGIN_B - (math.log(y) - math.log(y0)) / (math.log(y1) - math.log(y0)) * (H - MARGIN_B - MARGIN_T)
    draw.rectangle([ox + MARGIN_L, oy + MARGIN_T, ox + W - MARGIN_R, oy + H - MARGIN_B], outline=(0, 0, 0))
    draw.text((ox + MARGIN_L, oy + 8), title, fill=(0, 0, 0), font=font)
    for v in _ticks(x0, x1):
        draw.line([px(v), oy + H - MARGIN_B, px(v), oy + H - MARGIN_B + 4], fill=(0, 0, 0))
        draw.text((px(v) - 8, oy + H - MARGIN_B + 6), f"{v:g}", fill=(0, 0, 0), font=font)
    for v in _ticks(y0, y1):
        draw.line([ox + MARGIN_L - 4, py(v), ox + MARGIN_L, py(v)], fill=(0, 0, 0))
        draw.text((ox + 4, py(v) - 6), f"{v:g}", fill=(0, 0, 0), font=font)
    draw.text((ox + W // 2 - 10, oy + H - 16), xlabel, fill=(0, 0, 0), font=font)
    if floor:
        for x in range(int(px(x0)), int(px(x1)), 8):
            draw.line([x, py(floor), x + 4, py(floor)], fill=(150, 150, 150))
    for label, s in sorted(series.items()):
        c = colors[label]
        s = [p for p in s if p[0] > 0 and p[1] > 0]
        for a, b in zip(s, s[1:]):
            draw.line([px(a[0]), py(a[1]), px(b[0]), py(b[1])], fill=c, width=2)
        for x, y in s:
            draw.ellipse([px(x) - 3, py(y) - 3, px(x) + 3, py(y) + 3], fill=c)


def panels(items, path, xlabel="", ylabel="", columns=3, note="dashed: exact samples (the floor)"):
    font = ImageFont.load_default()
    rows = math.ceil(len(items) / columns)
    labels = sorted({k for _, s, _ in items for k in s})
    colors = {label: COLORS[i % len(COLORS)] for i, label in enumerate(labels)}   # one color per label everywhere
    per_row = max(1, W * min(columns, len(items)) // 150)
    legend_h = 16 * math.ceil(len(labels) / per_row) + 24
    img = Image.new("RGB", (W * min(columns, len(items)), H * rows + legend_h), "white")
    draw = ImageDraw.Draw(img)
    for i, (title, series, floor) in enumerate(items):
        _panel(draw, W * (i % columns), H * (i // columns), title, series, floor, font, xlabel, ylabel, colors)
    y = H * rows + 4
    draw.text((8, y), "; ".join(t for t in (ylabel, note) if t), fill=(0, 0, 0), font=font)
    for i, label in enumerate(labels):
        c = colors[label]
        x, yy = 8 + (i % per_row) * 150, y + 18 + 16 * (i // per_row)
        draw.line([x, yy + 6, x + 20, yy + 6], fill=c, width=3)
        draw.text((x + 26, yy), label, fill=(0, 0, 0), font=font)
    img.save(path)
