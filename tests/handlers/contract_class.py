"""A class entry point: initialize(context) once, then handle(data, context) per batch."""


class Greeter:
    def __init__(self):
        self.initialized_with = None

    def initialize(self, context):
        self.initialized_with = context.system_properties["model_dir"]

    def handle(self, data, context):
        return [f"initialized:{self.initialized_with is not None}" for _ in data]
