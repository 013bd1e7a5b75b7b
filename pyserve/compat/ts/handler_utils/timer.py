from pyserve.handlers.base_handler import timed

__all__ = ["timed"]
