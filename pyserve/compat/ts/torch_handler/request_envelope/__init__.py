"""TorchServe's request envelopes (pyserve.worker.envelopes), under their ts names."""
