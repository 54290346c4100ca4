"""A spec becomes the images of a run: tag lists read, the shard selected, options per registry.

    plan = expand_spec(spec, session, defaults, shard=(0, 2))   # reads only: tag lists

`bale run` archives the plan (batch/run.py) and `bale sync --src yaml` copies it (ops/sync.py),
so this module reads registries but moves nothing, and imports no operation.

Options per registry: a spec entry's `credentials`, `tls-verify` and `cert-dir` override the
command line's `--src-creds` / `--src-tls-verify` / `--src-cert-dir` for that registry's images
(as in `skopeo sync`); what the entry leaves out comes from the command line.

A repository whose tags cannot be listed does not stop the run: it becomes a failed entry of
the report, named by the repository (`host/repo`), and the run exits 1. Every shard lists every
repository (listing is cheap, and an image's shard is only known from its tag), so each shard
that fails to list one reports it: its own slice of that repository is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pipeline.batch.shard import select
from pipeline.batch.spec import RegistrySpec, RepoSelector, Spec, SpecImage, expand
from pipeline.copy.result import ImageResult
from pipeline.copy.session import RegistryOptions, Session
from pipeline.errors import BaleError, UsageError
from pipeline.refs import Reference
from pipeline.registry.tls import read_cert_dir
from pipeline.transfer import cancel


@dataclass
class RunPlan:
    """The images one run (one shard) archives, and the repositories that could not be listed."""

    images: list[tuple[Reference, RegistryOptions]] = field(default_factory=list)
    failures: list[ImageResult] = field(default_factory=list)
    selected: int = 0
    """Images the whole spec selects, before sharding."""
    shard: tuple[int, int] | None = None
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    """When the run began: tag listing is part of it."""
    immutable: frozenset[Reference] = frozenset()
    """Images whose spec entry says `immutable` (archived as with `--immutable`)."""
    storage_classes: dict[Reference, str] = field(default_factory=dict)
    """A spec's `storage-class` per image, over the command line's `--storage-class`."""


def registry_options(entry: RegistrySpec | SpecImage, defaults: RegistryOptions) -> RegistryOptions:
    """The command line's options with what a spec entry says for its registry on top."""
    return RegistryOptions(
        credentials=entry.credentials or defaults.credentials,
        authfile=defaults.authfile,
        tls_verify=defaults.tls_verify if entry.tls_verify is None else entry.tls_verify,
        cert_dir=entry.cert_dir or defaults.cert_dir,
        flags=defaults.flags,
    )


def spec_secrets(spec: Spec) -> list[str]:
    """Passwords and tokens written in a spec, to scrub from reports and logs."""
    out: list[str] = []
    for registry in spec.registries:
        if registry.credentials is not None:
            out.append(registry.credentials.password)
            if registry.credentials.identity_token:
                out.append(registry.credentials.identity_token)
    return [s for s in out if s]


def check_cert_dirs(spec: Spec) -> None:
    """A `cert-dir` that is missing or holds half a client certificate is bad input: said
    before anything is written or listed."""
    for entry in spec.registries:
        if entry.cert_dir:
            try:
                read_cert_dir(Path(entry.cert_dir).expanduser())
            except UsageError as exc:
                raise UsageError(f"{spec.source}:{entry.line}: cert-dir: {exc}") from None


def expand_spec(
    spec: Spec,
    session: Session,
    defaults: RegistryOptions,
    *,
    shard: tuple[int, int] | None = None,
) -> RunPlan:
    """List tags where the spec asks for it, select the shard, attach per-registry options.

    A `cert-dir` that is missing or holds half a client certificate is bad input, said before
    any tag is listed."""
    started = datetime.now(UTC)
    failures: list[ImageResult] = []
    check_cert_dirs(spec)

    def list_tags(registry: str, repository: str, entry: RegistrySpec) -> list[str]:
        cancel.check()  # after Ctrl-C or SIGTERM, the rest of a long spec is not listed
        client = session.client(registry, registry_options(entry, defaults))
        return client.list_tags(repository)

    def on_error(selector: RepoSelector, entry: RegistrySpec, exc: BaleError) -> None:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        failures.append(
            ImageResult(
                str(selector.repository),
                "failed",
                error=f"cannot list tags ({selector.kind}, {spec.source}:{selector.line}): "
                f"{message}",
            ).after_signal()
        )

    images = expand(spec, list_tags, on_error=on_error)
    chosen = select(images, *shard) if shard is not None else images
    return RunPlan(
        images=[(i.ref, registry_options(i, defaults)) for i in chosen],
        failures=failures,
        selected=len(images),
        shard=shard,
        started=started,
        immutable=frozenset(i.ref for i in chosen if i.immutable),
        storage_classes={i.ref: i.storage_class for i in chosen if i.storage_class},
    )
