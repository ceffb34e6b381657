"""The floor under the proxy: the libraries the dashboard's proxy is made of, doing nothing else.

    python -m bench.floor_proxy PORT OLLAMA_URL

eventlet.wsgi serving one Flask route that forwards `/ollama/<path>` to Ollama through one pool of
keep-alive connections (ollama_client/transport.py, the connection layer OllamaClient uses, with
none of OllamaClient's checks) and relays the body as it arrives (`read1`), in the request's own
green thread, as the dashboard's relay does. None of the dashboard's own work: no credentials, no
allowlist, no body limit, no Socket.IO middleware, no security headers, no usage meter, no hooks.

The gap between nginx and this is what the fixed stack (Flask on eventlet, README) costs before
any of the proxy's work; the gap between this and the dashboard is that work. Used only by
bench/proxy.py; never run as a server for users (it checks nothing).
"""
import os
import socket
import sys
import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")  # as app.py
import eventlet  # noqa: E402

eventlet.monkey_patch()

import eventlet.wsgi  # noqa: E402
from flask import Flask, Response, request  # noqa: E402

from ollama_client.transport import Pool  # noqa: E402

READ_CHUNK_BYTES = 64 * 1024


def create_app(ollama_url: str) -> Flask:
    pool = Pool(ollama_url, maxsize=64)
    app = Flask(__name__)

    @app.route("/ollama/<path:rest>", methods=["GET", "POST"])
    def forward(rest: str) -> Response:
        body = request.get_data() if request.method == "POST" else None
        headers = {"Accept-Encoding": "identity"}
        if request.content_type:
            headers["Content-Type"] = request.content_type
        upstream = pool.request(request.method, "/" + rest, body=body, headers=headers, timeout=(5.0, 30.0))

        def relay():
            try:
                while data := upstream.read1(READ_CHUNK_BYTES):
                    yield data
            finally:
                upstream.close()

        response = Response(relay(), status=upstream.status, direct_passthrough=True,
                            content_type=upstream.headers.get("Content-Type"))
        length = upstream.headers.get("Content-Length")
        if length is not None and not upstream.chunked:
            response.headers["Content-Length"] = length
        return response

    return app


def main() -> None:
    port, ollama_url = int(sys.argv[1]), sys.argv[2]
    listener = eventlet.listen(("127.0.0.1", port))
    # Set up for streaming as server.serve does: small writes leave at once (no Nagle delay, no
    # 4 KiB held back by eventlet) and header names go out as written.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    warnings.filterwarnings("ignore", message="capitalize_response_headers is disabled")
    eventlet.wsgi.server(listener, create_app(ollama_url), log_output=False, minimum_chunk_size=1,
                         capitalize_response_headers=False)


if __name__ == "__main__":
    main()
