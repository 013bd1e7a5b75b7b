"""pyserve on a Ray cluster: a .mar served as a Ray Serve application.

Each replica of the deployment runs pyserve's engine for one model in its own process (the
C++ core and the model's worker processes), so a request crosses Ray once, to a replica,
and is batched there as in `pyserve start`. Ray is imported when these names are first
used; the rest of pyserve never imports it.

    from ray import serve
    from pyserve.ray import pyserve_app

    serve.run(pyserve_app("/shared/echo.mar", num_replicas=2),
              name="echo", route_prefix="/predictions/echo")
"""

__all__ = ["PredictionFailed", "PyserveModel", "pyserve_app"]


def __getattr__(name: str):
    """Ray is imported on first use of these names, not when the `pyserve` CLI loads
    pyserve.ray.command."""
    if name in __all__:
        from pyserve.ray import deployment

        return getattr(deployment, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
