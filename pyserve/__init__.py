"""pyserve: a TorchServe-compatible model server with a C++ batching core."""

__version__ = "0.1.0"
