"""pyserve's built-in handlers, the ones `--handler base_handler|image_classifier|...` names.

They behave as TorchServe's ts.torch_handler classes (same methods, attributes and
outputs), so archives made for TorchServe run unchanged, but need neither torchvision
nor torchtext, and import captum only when an explanation is asked for. Each handler
module defines exactly one class, because the loader takes a module's only class as
its entry point.
"""
