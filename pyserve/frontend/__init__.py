"""The HTTP side: Starlette apps on uvicorn (uvloop, httptools), one per listener.

The frontend knows routes, status codes and JSON bodies; it hands each request to the
engine and knows nothing of shared memory or workers.
"""
