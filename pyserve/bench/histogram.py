"""A latency histogram as a PNG, drawn with Pillow (and its built-in bitmap font)."""

from __future__ import annotations

import math
from pathlib import Path

from pyserve.bench.report import RunResult

WIDTH, HEIGHT = 900, 420
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 40, 60
COLORS = [(31, 119, 180), (255, 127, 14)]
BINS = 60


def write_histogram(results: list[RunResult], path: Path) -> None:
    """One outline per result, latency on a log axis, so two servers compare at a glance."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        raise SystemExit("--histogram needs Pillow: pip install pillow") from None
    values = [v for result in results for v in result.latencies_ms if v > 0]
    if not values:
        raise SystemExit("no latencies to draw")
    low, high = math.log10(min(values)), math.log10(max(values))
    high = max(high, low + 1e-6)
    width = (high - low) / BINS

    def bin_of(v: float) -> int:
        return min(BINS - 1, int((math.log10(v) - low) / width)) if v > 0 else 0

    counts = []
    for result in results:
        row = [0] * BINS
        for value in result.latencies_ms:
            row[bin_of(value)] += 1
        counts.append([n / max(len(result.latencies_ms), 1) for n in row])
    tallest = max(max(row) for row in counts) or 1.0

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    x0, y0 = MARGIN_LEFT, HEIGHT - MARGIN_BOTTOM
    draw.line([(x0, MARGIN_TOP), (x0, y0), (WIDTH - MARGIN_RIGHT, y0)], fill="black")
    for decade in range(math.floor(low), math.ceil(high) + 1):
        x = x0 + (decade - low) / (high - low) * plot_w
        if x0 <= x <= WIDTH - MARGIN_RIGHT:
            draw.line([(x, y0), (x, y0 + 5)], fill="black")
            draw.text((x - 12, y0 + 8), f"{10.0 ** decade:g}", fill="black")
    draw.text((x0 + plot_w // 2 - 60, y0 + 30), "latency (ms, log scale)", fill="black")
    draw.text((8, MARGIN_TOP - 25), "share of requests", fill="black")
    for index, (result, row) in enumerate(zip(results, counts)):
        color = COLORS[index % len(COLORS)]
        points = []
        for bin_index, share in enumerate(row):
            left = x0 + bin_index / BINS * plot_w
            right = x0 + (bin_index + 1) / BINS * plot_w
            top = y0 - share / tallest * plot_h
            points += [(left, top), (right, top)]
        draw.line([(x0, y0), *points, (WIDTH - MARGIN_RIGHT, y0)], fill=color, width=2)
        label = f"{result.target}  p50 {result.percentile(50):.2f} ms  p99 {result.percentile(99):.2f} ms"
        draw.text((x0 + 10, MARGIN_TOP - 25 + 14 * index), label, fill=color)
    image.save(path, format="PNG")
