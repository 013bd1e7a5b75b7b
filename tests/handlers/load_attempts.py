"""A handler whose loads fail, hang or run out of memory as its model-config yaml says, so a
test can watch the server retry, time out and answer:

  failFirst: N       the first N load attempts raise RuntimeError("load attempt n fails")
  fastFirst: N       the first N attempts load at once; later ones take loadSeconds
  loadSeconds: S     how long a load takes (default 0)
  outOfMemory: kind  every load raises MemoryError ("cpu") or torch.cuda.OutOfMemoryError ("cuda")

Each attempt creates a file load-attempt-<n> holding the time it began, in the folder
$LOAD_ATTEMPTS (the model's folder if unset); creating it is atomic, so concurrent workers
count right.
"""

import os
import time


def _attempt() -> int:
    folder = os.environ.get("LOAD_ATTEMPTS", ".")
    number = 1
    while True:
        try:
            fd = os.open(os.path.join(folder, f"load-attempt-{number}"),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            number += 1
            continue
        os.write(fd, repr(time.time()).encode())
        os.close(fd)
        return number


def _load(config: dict) -> None:
    attempt = _attempt()
    if config.get("outOfMemory") == "cpu":
        raise MemoryError("pretend the model does not fit")
    if config.get("outOfMemory") == "cuda":
        import torch

        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    if attempt <= config.get("failFirst", 0):
        raise RuntimeError(f"load attempt {attempt} fails")
    if attempt > config.get("fastFirst", 0):
        time.sleep(config.get("loadSeconds", 0))


def handle(data, context):
    if data is None:
        _load(context.model_yaml_config)
        return None
    return ["loaded" for _ in data]
