"""`sweeps dashboard`: optuna-dashboard on the study storage, on loopback unless asked otherwise.

Trials show their learning curves (intermediate values), metrics (user
attributes) and the artifacts in the sweep's checkpoint store.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from sweeps import study as schema
from sweeps.artifacts import artifact_store
from sweeps.errors import SweepsError
from sweeps.storage import mask, open_storage, resolve_url

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(study: str | None, storage_url: str | None, *, host: str = "127.0.0.1", port: int = 8080,
          allow_remote_writes: bool = False, on_ready: Callable[[str], None] = print) -> None:
    """Bind first (a taken port is a clear error), then say where, then serve until Ctrl-C.

    optuna-dashboard lets whoever reaches it delete studies, set results and upload files; off loopback that
    is the whole network, so it takes ``allow_remote_writes`` (the CLI's --allow-remote-writes) to listen there.
    """
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    import optuna_dashboard

    if host not in LOOPBACK and not allow_remote_writes:
        raise SweepsError(f"--host {host} would let anyone who reaches port {port} delete studies, set results and "
                          "upload files (optuna-dashboard has no login); keep 127.0.0.1 and reach it through an SSH "
                          "tunnel, or add --allow-remote-writes on a network you trust")

    storage = open_storage(storage_url)
    path, location = "/dashboard", None
    if study:
        loaded = schema.load(study, storage_url)
        path = f"/dashboard/studies/{loaded._study_id}"
        location = loaded.user_attrs.get(schema.CONFIG_ATTR, {}).get("checkpoints", {}).get("store")
    app = optuna_dashboard.wsgi(storage, artifact_store=artifact_store(location))

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the stdlib's name)
            pass

    if threading.current_thread() is threading.main_thread():
        # Ctrl-C stops it even when started where SIGINT is ignored (a script's `cmd &`, nohup, CI runners),
        # as Python then leaves SIGINT ignored and `kill -INT` would do nothing; before the line that says it is ready
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server = make_server(host, port, app, handler_class=QuietHandler)
    except OSError as e:
        raise SweepsError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    shown_host = f"[{host}]" if ":" in host else host
    on_ready(f"optuna-dashboard for {mask(resolve_url(storage_url))} at http://{shown_host}:{port}{path}"
             + ("" if host in LOOPBACK else "  (reachable from other machines, with write access)"))
    try:
        server.serve_forever()
    finally:
        server.server_close()
