"""Answers with its model version (from the manifest) and has a describe_handle."""


from ts.torch_handler.base_handler import BaseHandler


class VersionProbe(BaseHandler):
    def initialize(self, context):
        self.context = context
        self.manifest = context.manifest
        self.initialized = True

    def preprocess(self, data):
        return data

    def inference(self, data, *args, **kwargs):
        return data

    def postprocess(self, data):
        return [self.manifest["model"]["modelVersion"] for _ in data]

    def describe_handle(self):
        return {"described_by": "handler", "version": self.manifest["model"]["modelVersion"]}
