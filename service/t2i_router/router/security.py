"""Who may reach the router and over what: loopback, TLS (mTLS) and bearer tokens.

- `check_exposure`: a non-loopback host needs TLS or an explicit ``insecure``.
- `server_credentials` / `channel_credentials`: TLS from PEM files; a client CA on the server
  makes it require client certificates (mTLS).
- `Tokens`: the generation token (Generate, GenerateBatch, Route, GetBudget) and the admin
  token (all of those and SetBudget). Their repr hides them; they are never logged.
- `AuthInterceptor`: checks ``authorization: Bearer <token>`` on every ``t2i_router.v1.Router``
  call in constant time (`hmac.compare_digest`) -> UNAUTHENTICATED (missing or unknown token)
  or PERMISSION_DENIED (the generation token on SetBudget). Health and reflection stay open.
  With no token configured, it lets everything through.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from t2i_router.errors import ConfigError
from t2i_router_client import SERVICE_NAME

__all__ = [
    "ADMIN_METHODS",
    "AuthInterceptor",
    "Tokens",
    "channel_credentials",
    "check_exposure",
    "is_loopback",
    "read_pem",
    "read_token",
    "server_credentials",
]

log = logging.getLogger(__name__)

#: Methods that need the admin token; every other Router method needs the generation token.
ADMIN_METHODS = frozenset({f"/{SERVICE_NAME}/SetBudget"})
_GUARDED_PREFIX = f"/{SERVICE_NAME}/"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or name) only accepts connections from this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, tls: bool, insecure: bool) -> None:
    """Refuses to serve plaintext on a non-loopback address unless ``insecure`` says so.

    Raises:
        ConfigError: ``host`` is not loopback, there is no TLS and ``insecure`` is False.
    """
    if is_loopback(host) or tls or insecure:
        return
    raise ConfigError(
        f"host {host} is not loopback: serve it with TLS (--tls-cert and --tls-key) or pass "
        "--insecure to accept plaintext"
    )


def read_pem(path: Path, what: str) -> bytes:
    """The bytes of a PEM file, or a `ConfigError` naming ``what`` and the path."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the {what} {path}: {e.strerror or e}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"the {what} {path} is not PEM")
    return data


def read_token(path: Path, what: str = "token file") -> str:
    """The token in ``path`` (surrounding whitespace stripped); never quoted in an error."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise ConfigError(f"cannot read the {what} {path}: {reason}") from None
    if not token:
        raise ConfigError(f"the {what} {path} is empty")
    return token


def server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    """TLS with the server's certificate chain and key; mTLS when ``client_ca`` is given."""
    pair = (read_pem(key, "TLS key"), read_pem(cert, "TLS certificate"))
    root = read_pem(client_ca, "client CA") if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=root, require_client_auth=bool(root)
    )


def channel_credentials(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """Client TLS: ``ca`` verifies the server (None: the system roots); cert/key for mTLS."""
    if (cert is None) != (key is None):
        raise ConfigError("a client certificate needs both --tls-cert and --tls-key")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, "TLS CA") if ca is not None else None,
        private_key=read_pem(key, "TLS key") if key is not None else None,
        certificate_chain=read_pem(cert, "TLS certificate") if cert is not None else None,
    )


@dataclass(frozen=True)
class Tokens:
    """The bearer tokens the server accepts (None: that kind is not configured).

    Attributes:
        generation: Grants Generate, GenerateBatch, Route and GetBudget.
        admin: Grants everything, SetBudget included.
    """

    generation: str | None = field(default=None, repr=False)
    admin: str | None = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        """Whether calls must carry a token at all."""
        return self.generation is not None or self.admin is not None

    def grant(self, presented: str | None) -> set[str]:
        """The roles (``"generation"``, ``"admin"``) ``presented`` holds (constant-time compare)."""
        roles: set[str] = set()
        if presented is None:
            return roles
        given = presented.encode("utf-8")
        # Both comparisons always run, so the time does not tell which token was close.
        is_admin = _same(given, self.admin)
        is_generation = _same(given, self.generation)
        if is_admin:
            roles |= {"admin", "generation"}
        if is_generation:
            roles.add("generation")
        return roles


def _same(given: bytes, token: str | None) -> bool:
    if token is None:
        hmac.compare_digest(given, given)
        return False
    return hmac.compare_digest(given, token.encode("utf-8"))


def bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` entry, or None."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def _refusal(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    # No deserializer: the request's bytes are never parsed for a refused call.
    async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(refuse)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Bearer-token checks on the Router service (see the module docstring)."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        if not self.tokens.enabled or not method.startswith(_GUARDED_PREFIX):
            return await continuation(details)
        roles = self.tokens.grant(bearer(details.invocation_metadata))
        need = "admin" if method in ADMIN_METHODS else "generation"
        if need in roles:
            return await continuation(details)
        if not roles:
            log.info("refused %s: missing or unknown bearer token", method)
            return _refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} needs 'authorization: Bearer <token>' with a valid token",
            )
        log.info("refused %s: the token lacks the %s role", method, need)
        return _refusal(grpc.StatusCode.PERMISSION_DENIED, f"{method} needs the admin token")
