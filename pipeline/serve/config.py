"""What one `bale serve` process is configured with; the CLI builds it, the app reads it.

The shared secret is never a command-line argument (it would show in `ps`): it comes from
`BALE_SERVE_SECRET` or a file. Registry credentials are the service's own (`--src-creds`,
`--authfile`, or a spec's per-registry entries); queued jobs never carry them.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from pipeline.copy.session import RegistryOptions
from pipeline.errors import UsageError
from pipeline.refs import Reference

DEFAULT_MAX_BODY = 1 << 20


def normalise_host(host: str) -> str:
    """A registry host as `Reference` spells it (`docker.io` for Docker Hub's aliases)."""
    try:
        return Reference.parse(f"{host.strip()}/x@sha256:{'0' * 64}").registry.lower()
    except UsageError:
        raise UsageError(f"bad registry host {host!r}") from None


@dataclass(frozen=True)
class ServeConfig:
    store_url: str
    queue_url: str
    secret: str
    allowed: frozenset[str]
    """Registry hosts events may name (normalised, lower case)."""
    endpoint_url: str | None = None
    workers: int = 2
    max_body: int = DEFAULT_MAX_BODY
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    """How workers reach a registry no spec entry names."""
    per_registry: dict[str, RegistryOptions] = field(default_factory=dict)
    """A spec's entries, by host: their credentials and TLS settings win."""
    reconcile_every: float = 0.0
    spec_path: str | None = None
    worker_name: str = ""
    registry_auth: dict[str, Any] = field(default_factory=dict)
    """Who may pull through `/v2/`: `htpasswd`, `token_file`, `anonymous_read` (the keywords
    of `RegistryAuth.from_files`)."""

    def __post_init__(self) -> None:
        if not self.secret:
            raise UsageError("no shared secret: set BALE_SERVE_SECRET or --secret-file")

    def registry_for(self, host: str) -> RegistryOptions:
        return self.per_registry.get(host.lower(), self.registry)

    def authorised(self, header: str | None) -> bool:
        """The header carries the secret as is (Harbor's auth header) or as `Bearer SECRET`
        (distribution's `headers`); compared in constant time."""
        if not header:
            return False
        given = header.strip().encode()
        plain = hmac.compare_digest(given, self.secret.encode())
        bearer = hmac.compare_digest(given, f"Bearer {self.secret}".encode())
        return plain | bearer
