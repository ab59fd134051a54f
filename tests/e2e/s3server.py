"""A real S3-compatible server for the tests: moto's S3 on 127.0.0.1, in this process.

`stop()` closes the port (clients get "connection refused", as from a store that went down)
and `start()` opens it again with every object kept, as a real store that restarts (moto keeps
them per process: a new S3Server starts from an empty store).
`stop_after_puts(prefix, n)` stops it right after the n-th object written under `prefix`:
a fault in the middle of an upload, at a known point.
"""

from __future__ import annotations

import logging
import threading
import urllib.request

from bigdeep.servers import HOST, free_port

# dummy keys: moto accepts any; what matters is that they come from the environment
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bigdeep-test",
    "AWS_SECRET_ACCESS_KEY": "bigdeep-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Server:
    def __init__(self, bucket: str = "bigdeep") -> None:
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self.stopped = threading.Event()
        self._server = None
        self._thread: threading.Thread | None = None
        self._stop_after: tuple[str, int] | None = None
        self._lock = threading.Lock()
        self._fresh = True

    def env(self) -> dict[str, str]:
        """What a client (DVC, boto3, the MLflow server) needs: keys and endpoint, no file."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> S3Server:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            HOST, self.port, self._counting(app), threaded=True, request_handler=MotoRequestHandler
        )
        self.stopped.clear()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        if self._fresh:  # moto keeps its objects per process: a new server starts empty
            self._fresh = False
            request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
            urllib.request.urlopen(request, timeout=30).close()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # werkzeug closes the listening socket as it returns
            self._thread.join()
            self._server = None
        self.stopped.set()

    def stop_after_puts(self, prefix: str, n: int) -> None:
        with self._lock:
            self._stop_after = (f"/{self.bucket}/{prefix}", n)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **_boto_keys())

    def create_bucket(self) -> None:
        self.client().create_bucket(Bucket=self.bucket)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2")
        return [
            obj["Key"]
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
        ]

    def _counting(self, app):
        def wsgi(environ, start_response):
            result = app(environ, start_response)
            if environ["REQUEST_METHOD"] == "PUT":
                with self._lock:
                    if self._stop_after and environ["PATH_INFO"].startswith(self._stop_after[0]):
                        prefix, left = self._stop_after
                        self._stop_after = (prefix, left - 1) if left > 1 else None
                        if left == 1:  # this PUT is answered; nothing after it is
                            threading.Thread(target=self.stop, daemon=True).start()
            return result

        return wsgi


def _boto_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }
