"""`dsa serve`: the OpenAI-compatible HTTP server (its own flags here; the engine flags are dsa.cli's).

    dsa serve --device cpu [--model M] [--host 127.0.0.1] [--port 8000] [--api-key KEY] [ENGINE OPTIONS]

Everything that can be checked without weights is checked first (flags, profile, model, layout vs the launch,
the KV-cache size, the port): each problem is one InputError. Then rank 0 (or the only process) binds the
port, loads the model in the background (GET /health: 503, then 200 and a "ready" line) and serves; the other
ranks of a --nproc / torchrun launch run dsa.engine.serving.run_follower. SIGTERM / SIGINT: running requests
get --shutdown-timeout seconds, the rest are aborted, exit status 0.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from dsa.errors import InputError

API_KEY_ENV = "DSA_API_KEY"
DEFAULT_PORT = 8000


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The serve flags (dsa.cli adds the engine flags next to them)."""
    from dsa.server.http import LOG_LEVELS

    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: every "
                   "interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0: any free)")
    p.add_argument("--api-key", default=None, help=f"require `Authorization: Bearer KEY` on /v1 routes (default: "
                   f"${API_KEY_ENV} when set)")
    p.add_argument("--served-model-name", metavar="NAME", help="the model id of the API (default: --model as "
                   "given, or the built-in model's name)")
    p.add_argument("--max-queue-len", type=int, default=1024, metavar="N",
                   help="waiting requests before new ones get 503 (default 1024)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="S",
                   help="on SIGTERM / SIGINT, seconds running requests get to finish before they are aborted "
                   "(default 30)")
    p.add_argument("--uvicorn-log-level", choices=LOG_LEVELS, default="info", help="uvicorn's log level "
                   "(default info: one line per request)")
    p.add_argument("--nproc", type=int, help="start this many local processes (one per rank of the layout)")


def check_serve_flags(args) -> None:
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in [0, 65535], got {args.port}")
    if args.max_queue_len < 1:
        raise InputError(f"--max-queue-len must be >= 1, got {args.max_queue_len}")
    t = args.shutdown_timeout
    if not math.isfinite(t) or t < 0:
        raise InputError(f"--shutdown-timeout must be a number of seconds >= 0, got {t}")
    if args.served_model_name is not None and not args.served_model_name.strip():
        raise InputError("--served-model-name must not be empty")
    if args.api_key is not None and not args.api_key.strip():
        raise InputError("--api-key must not be empty (leave it out to serve without a key)")


def api_key(args):
    return args.api_key if args.api_key is not None else (os.environ.get(API_KEY_ENV) or None)


def cmd_serve(args) -> int:
    from dsa.dist import launch
    from dsa.engine.args import EngineArgs
    from dsa.planning.hardware import detect

    check_serve_flags(args)
    setup = EngineArgs.from_cli(args).resolve()
    plan = setup.plan
    plan.check_runnable(detect())
    launch.check_launch(plan, args.nproc, fp8_weights=plan.weights == "fp8" and not setup.source.random_weights)
    tokenizer = setup.tokenizer()
    num_blocks = setup.num_blocks  # the cache-size check (an InputError), before any weight is read
    if launch.must_spawn(plan, args.nproc):  # this process only checks the port, starts the ranks and waits
        from dsa.server.http import bind_socket

        bind_socket(args.host, args.port).close()
        # SIGTERM reaches rank 0, which drains for --shutdown-timeout and then stops the other ranks
        return launch.spawn_local(args.nproc, args.argv, grace=args.shutdown_timeout + 10)
    groups = launch.init(plan)  # None: one process
    try:
        if groups is None or groups.rank == 0:
            return serve_http(args, setup, tokenizer, groups, num_blocks)
        return follow(setup, tokenizer, groups)
    finally:
        launch.shutdown(groups)


def follow(setup, tokenizer, groups) -> int:
    """A rank other than 0. Rank 0 leads the shutdown: a first SIGTERM / SIGINT here (a whole process group
    signalled, torchrun stopping its workers) is ignored, and run_follower returns on rank 0's stop message
    once its drain is over; a second signal stops this rank at once."""
    import signal

    from dsa.engine import serving

    def first(sig, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, first)
    serving.run_follower(setup, setup.build_model(groups), tokenizer, groups)
    return 0


def serve_http(args, setup, tokenizer, groups, num_blocks: int) -> int:
    from dsa.engine import serving
    from dsa.server.app import create_app
    from dsa.server.engine import EngineHost
    from dsa.server.http import bind_socket, make_server, url_of

    sock = bind_socket(args.host, args.port)
    url = url_of(sock)
    name = args.served_model_name or args.model or setup.source.name
    server = None

    def ready():
        _say(f"ready: model {name!r} at {url}/v1 (max_model_len {setup.max_seq_len}, {num_blocks} KV blocks "
             f"of {setup.plan.page_size} tokens)")

    def failed(err):
        if server is not None:
            server.should_exit = True

    def load():
        model = setup.build_model(groups)
        return serving.build_core(setup, model, tokenizer, groups)

    host = EngineHost(model_name=name, tokenizer=tokenizer, max_model_len=setup.max_seq_len,
                      vocab_size=setup.config.vocab_size, max_queue_len=args.max_queue_len,
                      shutdown_timeout=args.shutdown_timeout, on_ready=ready, on_failure=failed,
                      close_core=serving.close_core)  # several ranks: lets the others stop
    app = create_app(host, api_key=api_key(args), loader=load)
    server = make_server(app, log_level=args.uvicorn_log_level, shutdown_timeout=args.shutdown_timeout,
                         on_signal=host.begin_shutdown)
    _say(f"listening on {url}; loading model {setup.source.name} on {setup.profile.name} (GET /health: 503 until "
         "ready)")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if host.error is not None:
        raise host.error
    return 0


def _say(line: str) -> None:
    print(f"[dsa] {line}", file=sys.stderr, flush=True)


__all__ = ["add_arguments", "cmd_serve", "serve_http", "check_serve_flags", "API_KEY_ENV"]
