"""TLS trust for one registry, set up the way containers/image does it (`pkg/tlsclientconfig`).

A registry's certificate directory holds:

- `*.crt`: CA certificates, ADDED to the system's (a partner's private CA);
- `*.cert` with a matching `*.key` (same name): a client certificate, for registries that ask
  for one (mutual TLS).

The directory is the one given (`--cert-dir`, `--src-cert-dir`, `--dest-cert-dir`, a spec's
`cert-dir`), which replaces the defaults; otherwise the first of
`~/.config/containers/certs.d/<host[:port]>/`, `/etc/containers/certs.d/<host[:port]>/` and
`/etc/docker/certs.d/<host[:port]>/` that exists (containers/image's order; `<host[:port]>` is
the registry as the image reference spells it, `docker.io` included). Without any, the system's
CAs alone are trusted.

A client builds its context once (loading CAs costs ~20 ms) and every connection shares it.
A failed handshake is turned into one line that says what the certificate problem was and
where trust can be added (`describe_tls_error`).
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from urllib3.util.ssl_ import create_urllib3_context

from pipeline.errors import UsageError

log = logging.getLogger("bale.registry")

CERTS_D = (
    "~/.config/containers/certs.d",
    "/etc/containers/certs.d",
    "/etc/docker/certs.d",
)
"""Where a registry's certificate directory is looked for when none is given (first found)."""


@dataclass(frozen=True)
class CertDir:
    """The certificate files of one registry, as found in its directory."""

    path: Path
    cas: tuple[Path, ...] = ()
    client: tuple[Path, Path] | None = None
    """(certificate, key) of the client certificate, if the directory has one."""


def find_cert_dir(registry: str, explicit: str | None = None) -> Path | None:
    """The directory to read for `registry`: `explicit`, else the first certs.d entry found."""
    if explicit:
        return Path(explicit).expanduser()
    for base in CERTS_D:
        candidate = Path(base).expanduser() / registry
        try:
            if candidate.is_dir():
                return candidate
        except OSError:  # unreadable parent: containers/image skips it too
            continue
    return None


def read_cert_dir(path: Path) -> CertDir:
    """The `*.crt` CAs and the `*.cert`/`*.key` pair in `path`; a half pair is bad input."""
    try:
        names = sorted(entry.name for entry in os.scandir(path) if entry.is_file())
    except FileNotFoundError:
        raise UsageError(f"certificate directory {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read certificate directory {path}: {exc.strerror}") from None
    cas = tuple(path / name for name in names if name.endswith(".crt"))
    pairs: list[tuple[Path, Path]] = []
    for name in names:
        if name.endswith(".cert"):
            key = name[: -len(".cert")] + ".key"
            if key not in names:
                raise UsageError(
                    f"{path / name}: client certificate without its key {key} "
                    f"(CA certificates end in .crt)"
                )
            pairs.append((path / name, path / key))
        elif name.endswith(".key") and name[: -len(".key")] + ".cert" not in names:
            raise UsageError(f"{path / name}: key without its client certificate (NAME.cert)")
    if len(pairs) > 1:
        log.warning("%s: %d client certificates; using %s", path, len(pairs), pairs[0][0].name)
    return CertDir(path, cas, pairs[0] if pairs else None)


def tls_context(registry: str, *, verify: bool, cert_dir: str | None = None) -> ssl.SSLContext:
    """The one context of a registry client: system CAs (when checked), the registry's `*.crt`
    on top, its client certificate. Left to itself urllib3 builds a context per connection and
    loads the system's CAs into each (about 20 ms here), also for the https probe of an insecure
    registry, which checks nothing. `SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured."""
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE)
    found = find_cert_dir(registry, cert_dir)
    files = read_cert_dir(found) if found is not None else None
    if verify:
        context.load_default_certs()
        for ca in files.cas if files else ():
            try:
                context.load_verify_locations(cafile=str(ca))
            except (ssl.SSLError, OSError) as exc:
                raise UsageError(f"{ca}: not a PEM CA certificate ({_ssl_text(exc)})") from None
    if files is not None and files.client is not None:
        cert, key = files.client
        try:
            context.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(
                f"{cert}: cannot use as client certificate with {key.name} ({_ssl_text(exc)})"
            ) from None
    if files is not None:
        log.debug(
            "%s: certificates from %s (%d CA, client certificate: %s)",
            registry,
            files.path,
            len(files.cas),
            files.client[0].name if files.client else "none",
        )
    return context


def _ssl_text(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason.lower().replace("_", " ")
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The `ssl` module's error inside urllib3's wrappers, if there is one."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        pending.extend(a for a in current.args if isinstance(a, BaseException))
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None


_CLIENT_CERT_REASONS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the registry requires a client certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the registry refused the client certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the registry refused the client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the registry does not trust the client certificate's CA",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the registry says the client certificate has expired",
}


def certificate_problem(exc: BaseException) -> tuple[str, bool]:
    """What went wrong in a handshake, in words, and whether it is about a client certificate."""
    error = _ssl_error(exc)
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {error.verify_message}", False
    reason = getattr(error, "reason", None) if error is not None else None
    if isinstance(reason, str) and reason in _CLIENT_CERT_REASONS:
        return _CLIENT_CERT_REASONS[reason], True
    if reason == "WRONG_VERSION_NUMBER":
        return "the server does not speak TLS on this port (plain HTTP?)", False
    if isinstance(reason, str) and reason:
        return reason.lower().replace("_", " "), False
    return (str(error or exc).splitlines() or ["handshake failed"])[0], False


def _client_pair(path: Path) -> tuple[Path, Path] | None:
    try:
        return read_cert_dir(path).client
    except UsageError:
        return None


def describe_tls_error(
    exc: BaseException, host: str, registry: str, *, verify: bool, prefix: str, cert_dir: str | None
) -> str:
    """One line for a failed handshake with `host`: the problem, then where to fix it.

    `prefix` is the command's spelling of the registry's options (`src-`, `dest-`, or none),
    so the hint names `--src-cert-dir` on archive and `--dest-cert-dir` on restore.
    """
    problem, client_side = certificate_problem(exc)
    found = find_cert_dir(registry, cert_dir)
    where = f" (certificates read from {found})" if found is not None else ""
    if client_side and (found is None or _client_pair(found) is None):
        problem = "the registry requires a client certificate and none is set up"
    dirs = f"--{prefix}cert-dir DIR or {CERTS_D[0]}/{registry}/"
    if client_side:
        hint = f"put the client certificate as NAME.cert and NAME.key in {dirs}"
    elif verify:
        hint = (
            f"add the registry's CA as a *.crt file in {dirs}, "
            f"or as a last resort --{prefix}tls-verify=false"
        )
    else:
        hint = ""
    return f"TLS error talking to {host}: {problem}{where}" + (f"; {hint}" if hint else "")
