"""A real S3-compatible server for tests: moto's server mode, on a free port, in this process.

Clients reach it as they reach any S3-compatible store, through the standard variables
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION): s3fs and botocore
read them, and child processes inherit them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import boto3
from moto.server import ThreadedMotoServer


@dataclass(frozen=True)
class S3Server:
    """A started server and the variables that point clients at it."""

    endpoint: str

    @property
    def environ(self) -> dict[str, str]:
        """The standard AWS variables for this server (dummy credentials, which moto accepts)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}

    def new_bucket(self) -> str:
        """A fresh, empty bucket's name."""
        name = f"fitjobs-{uuid.uuid4().hex[:12]}"
        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        client.create_bucket(Bucket=name)
        return name


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """Run moto's S3 server on a free port, with this process's AWS variables pointing at it."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    running = S3Server(endpoint=f"http://{host}:{port}")
    saved = {name: os.environ.get(name) for name in running.environ}
    os.environ.update(running.environ)
    try:
        yield running
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()
