"""One Flask worker process: examples/flask_app.py's ``create_app()``, served by werkzeug.

    DATABASE_URL=postgresql://... TOTAL_MAX_CONNECTIONS=6 \\
        python -m tests.integration.flask_worker --max-seconds 60

Run from the repository's root. Like a gunicorn worker without ``--preload``,
the process calls the factory itself, so it opens a pool of its own and joins
the fleet of the example's pool name. It serves the app with werkzeug (a
thread per request) on a free port of 127.0.0.1 and prints one JSON line,
``{"event": "ready", "port": ..., "pid": ...}``. It serves until ``SIGTERM``
(or ``--max-seconds``, so it never outlives a test that died), then stops the
server, closes the pool and prints ``{"event": "stopped", ...}`` with the
pool's statistics and the fleet total it saw.

Besides the example's routes (``/`` and ``/stats``), it adds
``/hold/<ms>``: one connection of the same pool, borrowed for a
``pg_sleep`` of ``ms`` milliseconds, so that a test can make the workers'
demand exceed their total.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from typing import Any

from examples.flask_app import create_app
from werkzeug.serving import make_server


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args()
    if not 0 < args.max_seconds <= 600:
        parser.error("--max-seconds must be in (0, 600]")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())

    app = create_app()  # DATABASE_URL, TOTAL_MAX_CONNECTIONS from the environment
    pool = app.extensions["pool"]

    @app.get("/hold/<int:ms>")
    def hold(ms: int) -> dict[str, Any]:
        with pool.connection() as conn:
            (backend,) = conn.execute(
                "SELECT pg_backend_pid() FROM pg_sleep(%s)", [ms / 1000]
            ).fetchone()
        return {"backend": backend, "pid": os.getpid()}

    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    emit("ready", port=server.server_port, pid=os.getpid())
    stopping.wait(args.max_seconds)
    server.shutdown()
    serving.join(timeout=30)
    stats = pool.get_stats()
    fleet_total = pool.elastic.fleet().fleet_total
    pool.close()
    emit("stopped", stats=stats, fleet_total=fleet_total, signalled=stopping.is_set())


if __name__ == "__main__":
    main()
