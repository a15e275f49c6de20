"""A `redis-server` that speaks only TLS (`--port 0 --tls-port N`), with a CA, a server and a
client certificate generated for the test run (EC keys: fast to make), and an admin client
for ACL set-up. Never the machine's 6379; nothing is read from outside the temporary directory.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import time
from pathlib import Path

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .redis_support import _die_with_parent, free_port, redis_server_binary

__all__ = ["Certificates", "TlsRedisServer", "make_certificates"]


class Certificates:
    """PEM files: a CA, a server certificate for 127.0.0.1 and localhost, a client one, and an
    unrelated CA (to check that a server signed by someone else is refused)."""

    def __init__(self, directory: Path) -> None:
        self.ca = directory / "ca.crt"
        self.server_cert = directory / "server.crt"
        self.server_key = directory / "server.key"
        self.client_cert = directory / "client.crt"
        self.client_key = directory / "client.key"
        self.other_ca = directory / "other-ca.crt"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer or _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_certificates(directory: Path, server_names: list[str] | None = None) -> Certificates:
    """`server_names`: DNS names the server certificate is for, instead of 127.0.0.1 and
    localhost (to test the hostname check)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = Certificates(directory)
    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("hub test CA", ca_key, None, ca_key, ca=True)
    files.ca.write_bytes(ca.public_bytes(pem))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate(
        "redis test server", server_key, ca.subject, ca_key,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        names=(
            [x509.DNSName(name) for name in server_names] if server_names
            else [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        ),
    )  # fmt: skip
    files.server_cert.write_bytes(server.public_bytes(pem))
    _write_key(server_key, files.server_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate(
        "hub", client_key, ca.subject, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    files.client_cert.write_bytes(client.public_bytes(pem))
    _write_key(client_key, files.client_key)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _certificate("someone else's CA", other_key, None, other_key, ca=True)
    files.other_ca.write_bytes(other.public_bytes(pem))
    return files


class TlsRedisServer:
    """One TLS-only `redis-server` on 127.0.0.1 (no plain port at all)."""

    def __init__(
        self, directory: Path, certificates: Certificates, *, client_certificates: str = "no"
    ) -> None:
        self.directory = directory
        self.certificates = certificates
        self.client_certificates = client_certificates  # tls-auth-clients: no|yes|optional
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def url(self, credentials: str = "", host: str = "127.0.0.1") -> str:
        at = f"{credentials}@" if credentials else ""
        return f"rediss://{at}{host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        c = self.certificates
        log = self.directory / "redis.log"
        argv = [
            redis_server_binary(),
            "--port", "0",
            "--tls-port", str(self.port),
            "--bind", "127.0.0.1",
            "--tls-cert-file", str(c.server_cert),
            "--tls-key-file", str(c.server_key),
            "--tls-ca-cert-file", str(c.ca),
            "--tls-auth-clients", self.client_certificates,
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(log),
            "--daemonize", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self.process = None
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"TLS redis-server on port {self.port} exited:\n{tail}")
            try:
                with self.admin(check_hostname=False) as admin:
                    if admin.ping():
                        return
            except (redis.RedisError, OSError, ssl.SSLError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"TLS redis-server on port {self.port} did not answer PING")
            time.sleep(0.01)

    def admin(self, *, check_hostname: bool = True) -> redis.Redis:
        """The `default` user (all permissions) over TLS, with the client certificate."""
        c = self.certificates
        return redis.Redis.from_url(
            self.url(),
            ssl_check_hostname=check_hostname,
            ssl_ca_certs=str(c.ca),
            ssl_certfile=str(c.client_cert),
            ssl_keyfile=str(c.client_key),
            socket_timeout=2,
            socket_connect_timeout=1,
        )

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None
