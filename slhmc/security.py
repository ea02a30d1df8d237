"""CurveZMQ authentication and encryption between the server and its workers (pyzmq's zmq.auth).

``slhmc keys DIR`` makes a key directory::

    DIR/server.key          the server's public key      (every worker needs it)
    DIR/server.key_secret   the server's key pair        (the server only)
    DIR/client.key_secret   a worker key pair            (every worker)
    DIR/authorized/*.key    worker public keys the server accepts

The server started with ``--keys DIR`` accepts only workers whose public key is in
``authorized/``; everything on the wire is encrypted. Without keys the server binds loopback or
ipc only: a ``tcp://`` address on another interface is refused.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)


class SecurityError(RuntimeError):
    pass


def create_keys(directory: str | Path, client_name: str = "client") -> Path:
    """Make (or extend) a key directory; an existing server key pair is kept."""
    d = Path(directory)
    (d / "authorized").mkdir(parents=True, exist_ok=True)
    if not (d / "server.key_secret").exists():
        zmq.auth.create_certificates(d, "server")
    if not (d / f"{client_name}.key_secret").exists():
        public, _ = zmq.auth.create_certificates(d, client_name)
        shutil.copy(public, d / "authorized" / Path(public).name)
        Path(public).unlink()  # the public key lives in authorized/; the secret file holds both
    for secret in d.glob("*.key_secret"):
        secret.chmod(0o600)
    return d


def is_local(endpoint: str) -> bool:
    """ipc/inproc, or tcp on a loopback address."""
    if not endpoint.startswith("tcp://"):
        return endpoint.startswith(("ipc://", "inproc://"))
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # an interface or host name: not provably loopback
        return False


def server_setup(keys: str | Path | None, bind: str, context: zmq.Context) -> Callable[[zmq.Socket], None] | None:
    """The socket set-up for the server's ROUTER: CurveZMQ with the authorized worker keys.

    Refuses a non-local bind without keys. Returns None when no keys are used.
    """
    if keys is None:
        if not is_local(bind):
            raise SecurityError(
                f"refusing to bind {bind} without authentication: make keys with `slhmc keys DIR` and pass "
                "--keys DIR to the server and the workers, or bind tcp://127.0.0.1 / ipc://"
            )
        return None
    d = Path(keys)
    if not (d / "server.key_secret").exists():
        raise SecurityError(f"{d}/server.key_secret not found: make keys with `slhmc keys {d}`")
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(d / "authorized"))
    public, secret = zmq.auth.load_certificate(d / "server.key_secret")

    def setup(sock: zmq.Socket) -> None:
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_server = True

    setup.authenticator = auth  # kept alive with the set-up function
    n = len(list((d / "authorized").glob("*.key")))
    log.info("CurveZMQ on: %d authorized worker key(s) in %s", n, d / "authorized")
    return setup


def client_setup(keys: str | Path | None, name: str = "client") -> Callable[[zmq.Socket], None] | None:
    if keys is None:
        return None
    d = Path(keys)
    for needed in ("server.key", f"{name}.key_secret"):
        if not (d / needed).exists():
            raise SecurityError(f"{d}/{needed} not found: copy the key directory made by `slhmc keys`")
    server_public, _ = zmq.auth.load_certificate(d / "server.key")
    public, secret = zmq.auth.load_certificate(d / f"{name}.key_secret")

    def setup(sock: zmq.Socket) -> None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server_public

    return setup
