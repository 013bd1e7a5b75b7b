"""The frontend ceiling: a bare Starlette app on uvicorn (uvloop, httptools) that answers the
request body itself, with no engine and no worker. No Python model server can beat it here.

    python benchmarks/ceiling_app.py PORT
"""

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def echo(request: Request) -> Response:
    return Response(await request.body())


app = Starlette(routes=[Route("/predictions/echo", echo, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                log_level="warning", access_log=False)
