"""The worker process: loads one model's handler and runs the batches the server sends.

It knows nothing of HTTP: it reads batch frames from its request ring and writes result
frames to its response ring (see pyserve.protocol).
"""
