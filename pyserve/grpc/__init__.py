"""TorchServe's gRPC APIs, from its own inference.proto and management.proto (protos/).

One folder per protocol: this is gRPC, as pyserve.frontend is HTTP. Both reach the models
through the same seams: predictions through pyserve.frontend.predictions.Predictor and a
pyserve.serving.directory.Directory, management through the operations of
pyserve.frontend.management.
"""
