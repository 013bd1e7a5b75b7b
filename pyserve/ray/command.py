"""`pyserve ray serve ARCHIVE`: a .mar served on a Ray cluster as a Ray Serve application.

It connects to the cluster (--address, else RAY_ADDRESS, else a local one it starts),
deploys the application and stays attached until Ctrl-C or SIGTERM, then deletes it; with
--detach it leaves the application running on the cluster and exits. The archive must be
readable at the same path on every node (shared storage), or be an http(s) URL.

Ray is imported only when the command runs: `pyserve --help` does not need it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_HTTP_PORT = 8000  # Ray Serve's


def add_ray_parser(commands) -> None:
    ray = commands.add_parser("ray", help="serve models on a Ray cluster (needs pyserve[ray])",
                              description="Serve models on a Ray cluster with Ray Serve.")
    actions = ray.add_subparsers(dest="ray_command", required=True, metavar="COMMAND")
    serve = actions.add_parser("serve", help="serve a model archive as a Ray Serve application",
                               description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("archive", help="model archive: a path every node can read, or an "
                                       "http(s) URL")
    serve.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a "
                                         "local cluster)")
    serve.add_argument("--name", help="application name (default: the model name)")
    serve.add_argument("--route-prefix", help="HTTP path the application answers under "
                                              "(default: /predictions/MODEL, as pyserve)")
    scale = serve.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, default=1,
                       help="replicas, each a pyserve engine with its workers (default 1)")
    scale.add_argument("--autoscaling-config", type=json.loads, metavar="JSON",
                       help="Ray Serve's autoscaling_config, passed as it is, e.g. "
                            "'{\"min_replicas\": 1, \"max_replicas\": 4, "
                            "\"target_ongoing_requests\": 32}'")
    serve.add_argument("--num-cpus", type=float, default=1,
                       help="CPUs Ray reserves for each replica (default 1)")
    serve.add_argument("--workers", type=int,
                       help="worker processes per replica (default: one per CPU of --num-cpus)")
    serve.add_argument("--max-replicas-per-node", type=int,
                       help="at most this many replicas on one node")
    serve.add_argument("--max-ongoing-requests", type=int,
                       help="requests one replica holds at once (default 100, pyserve's "
                            "job_queue_size)")
    serve.add_argument("--model-name", help="model name (default: the archive's)")
    serve.add_argument("--batch-size", type=int, help="largest batch (default: the archive's "
                                                      "model-config, else 1)")
    serve.add_argument("--max-batch-delay", type=int, metavar="MS",
                       help="longest wait for a batch to fill, in ms (default: the "
                            "archive's model-config, else 100)")
    serve.add_argument("--response-timeout", type=int, metavar="SECONDS",
                       help="longest a batch may run before its worker is restarted")
    serve.add_argument("--http-host", default="127.0.0.1",
                       help="where Ray Serve's HTTP proxy listens, if this command starts "
                            "Serve (default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                       help=f"its port (default {DEFAULT_HTTP_PORT})")
    serve.add_argument("--detach", action="store_true",
                       help="leave the application running and exit once it is ready")
    serve.set_defaults(handler=run_ray_serve)


def app_name(archive: str, model_name: str | None) -> str:
    """The model name if given, else the archive's file name without its suffix."""
    if model_name:
        return model_name
    name = Path(urlsplit(archive).path).name
    return name.removesuffix(".mar").removesuffix(".tar.gz")


def run_ray_serve(args: argparse.Namespace) -> int:
    try:
        import ray
        from ray import serve
    except ImportError:
        print("pyserve ray: Ray Serve is not installed: pip install 'pyserve[ray]'",
              file=sys.stderr)
        return 2
    from pyserve.ray.deployment import pyserve_app

    name = args.name or app_name(args.archive, args.model_name)
    route_prefix = args.route_prefix or f"/predictions/{app_name(args.archive, args.model_name)}"
    model = {key: getattr(args, key) for key in ("model_name", "batch_size", "max_batch_delay",
                                                  "response_timeout", "workers")}
    scaling = ({"autoscaling_config": args.autoscaling_config} if args.autoscaling_config
               else {"num_replicas": args.replicas})
    if args.max_ongoing_requests is not None:
        scaling["max_ongoing_requests"] = args.max_ongoing_requests
    app = pyserve_app(args.archive, num_cpus=args.num_cpus,
                      max_replicas_per_node=args.max_replicas_per_node, **scaling, **model)
    ray.init(address=args.address, logging_level="WARNING")
    serve.start(http_options={"host": args.http_host, "port": args.http_port})
    serve.run(app, name=name, route_prefix=route_prefix)
    print(f"serving {name} on Ray Serve at {route_prefix}", flush=True)
    if args.detach:
        return 0
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C: KeyboardInterrupt
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    serve.delete(name)
    print(f"deleted {name}", flush=True)
    return 0
