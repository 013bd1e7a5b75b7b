"""Two classes and no `handle` function: TorchServe refuses to guess, and so does pyserve."""


class First:
    def handle(self, data, context):
        return data


class Second:
    def handle(self, data, context):
        return data
