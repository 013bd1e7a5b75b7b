from pyserve.handlers.text_handler import TextHandler

__all__ = ["TextHandler"]
