"""pyserve's stand-in for the ``ts`` package of TorchServe (see pyserve.compat)."""

__version__ = "0.12.0"
