"""TorchServe's inference.proto and management.proto, and the modules generated from them
(see README.md here for their origin and the command that generates them)."""
