"""The worker process: loads one model's handler and runs the batches the server sends.

It knows nothing of HTTP: it reads batch frames from its channel and writes result
frames back (see pyserve.frames).
"""
