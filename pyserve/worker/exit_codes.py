"""Why a worker process ended, as its exit code tells the server.

The server answers a registration whose worker ran out of memory while loading 507, as
TorchServe does; the exit code is how it learns that the handler's error was one.
"""

STOPPED = 0  # told to stop
LOAD_FAILED = 1  # the handler failed to load (or the server died before the worker started)
NO_LOAD_FRAME = 2  # the first frame was no load frame
CHANNEL_BROKEN = 3  # the server's frames could not be read
OUT_OF_MEMORY = 4  # the handler failed to load for want of memory (MemoryError, a CUDA error)
