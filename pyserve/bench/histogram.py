"""A latency histogram as a PNG, drawn with matplotlib (the optional `pyserve[bench]` extra).

Latency is on a log axis, so that two servers an order of magnitude apart compare at a
glance. Each series is the share of its own target's requests, so that runs of different
lengths compare too. Matplotlib draws with its Agg backend: no display is needed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from urllib.parse import urlsplit

from pyserve.bench.report import RunResult

BINS = 60
INSTALL_HINT = "pip install 'pyserve[bench]' (or: pip install matplotlib)"
# /predictions/NAME[/VERSION], KServe v1 /v1/models/NAME:predict, v2 /v2/models/NAME/infer
_MODEL_IN_PATH = re.compile(r"/(?:predictions|models)/([^/:]+)")


def model_name(url: str) -> str:
    """The model a predictions URL asks for: a name that outlives the port an archive was
    served on for the run."""
    path = urlsplit(url).path
    found = _MODEL_IN_PATH.search(path)
    return found.group(1) if found else path or url


def series_labels(results: list[RunResult]) -> list[str]:
    names = [model_name(result.target) for result in results]
    if len(set(names)) < len(names):  # the same model on both sides of --compare
        names = [f"{name} ({role})" for name, role in zip(names, ("target", "compare"))]
    labels = []
    for name, result in zip(names, results):
        label = f"{name}: p50 {result.percentile(50):.3g} ms, p99 {result.percentile(99):.3g} ms"
        if result.failed:
            label += f", {result.error_rate:.1%} failed"
        labels.append(label)
    return labels


def latency_ticks(low: float, high: float) -> list[float]:
    """At least a few labelled values on the log axis, however narrow the range: 1-2-5 steps,
    then 1..9 steps, then the ends and middle rounded to three digits."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for steps in ((1, 2, 5), range(1, 10)):
        ticks = [step * 10.0 ** decade for decade in decades for step in steps]
        ticks = [tick for tick in ticks if low <= tick <= high]
        if len(ticks) >= 3:
            return ticks
    middle = math.sqrt(low * high)
    return sorted({float(f"{value:.3g}") for value in (low, middle, high)})


def draw_histogram(results: list[RunResult]):
    """The figure, one step outline per result; targets where every request failed are left
    out, as their latencies are of error answers."""
    import numpy
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter, PercentFormatter

    drawn = [(result, label) for result, label in zip(results, series_labels(results))
             if not result.all_failed]
    values = numpy.concatenate([numpy.asarray(result.latencies_ms) for result, _ in drawn])
    values = values[values > 0]
    low, high = values.min(), max(values.max(), values.min() * 1.01)
    bins = numpy.geomspace(low, high, BINS + 1)

    figure = Figure(figsize=(9, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for result, label in drawn:
        latencies = numpy.asarray(result.latencies_ms)
        axes.hist(latencies, bins=bins, histtype="step", linewidth=1.8, label=label,
                  weights=numpy.full(len(latencies), 100 / len(latencies)))
    axes.set_xscale("log")
    axes.set_xticks(latency_ticks(low, high))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    axes.set_xlabel("latency (ms, log scale)")
    axes.set_ylabel("share of requests")
    axes.grid(True, which="major", alpha=0.3)
    axes.set_title("pyserve bench: latency")
    figure.legend(loc="outside lower center", ncols=1, frameon=False)
    return figure


def write_histogram(results: list[RunResult], path: Path) -> str:
    """Writes the PNG; returns what was done, or why nothing was, as a line for the user."""
    if all(result.all_failed for result in results):
        return "no latency histogram: every request failed"
    try:
        import matplotlib  # noqa: F401 - only to tell a missing extra from other errors
    except ImportError:
        return f"no latency histogram: --histogram needs matplotlib: {INSTALL_HINT}"
    try:
        draw_histogram(results).savefig(path, format="png")
    except OSError as error:
        return f"no latency histogram: {error}"
    return f"latency histogram written to {path}"
