"""`bale inspect` and `bale list-tags`: skopeo's JSON for an image or a repository."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from pipeline.cli.options import (
    ClientFlags,
    SkopeoCommand,
    endpoint_option,
    examples,
    option,
    platform_option,
    registry_options,
    store_options,
)
from pipeline.cli.output import handles_errors, naming
from pipeline.errors import AuthError

if TYPE_CHECKING:
    from pipeline.oci import Platform
    from pipeline.registry.client import RegistryClient


def registry_client(host: str, flags: ClientFlags) -> RegistryClient:
    from pipeline.registry.client import RegistryClient
    from pipeline.registry.credentials import parse_creds
    from pipeline.registry.transport import READ_TIMEOUT, ConnectionOptions, RegistryOptions
    from pipeline.transfer.retry import RetryPolicy

    registry = flags.registry
    return RegistryClient(
        host,
        ConnectionOptions(
            RegistryOptions(
                credentials=parse_creds(registry.creds) if registry.creds else None,
                authfile=registry.authfile,
                tls_verify=registry.tls_verify,
                cert_dir=registry.cert_dir,
            ),
            retry=RetryPolicy() if flags.retries is None else RetryPolicy(retries=flags.retries),
            read_timeout=flags.read_timeout or READ_TIMEOUT,
        ),
    )


def _write(out: bytes | str) -> None:
    stream = sys.stdout.buffer
    stream.write(out if isinstance(out, bytes) else out.encode())
    stream.flush()


@examples(
    "bale inspect docker://registry.example.com/team/app:1.0",
    "bale inspect --config --platform linux/arm64 docker://registry.example.com/team/app:1.0",
    "bale inspect --from s3://my-archive/images registry.example.com/team/app:1.0",
)
@click.command("inspect", cls=SkopeoCommand)
@click.argument("image")
@option(
    "--raw", is_flag=True, help="Print the manifest exactly as served (with --config: the config)."
)
@option("--config", "show_config", is_flag=True, help="Print the image's config.")
@option("-n", "--no-tags", is_flag=True, help="Do not list the repository's tags.")
@platform_option(
    "The platform of an index to describe. Without it, an index is described by "
    "its image for this machine (linux/<this architecture>), as skopeo does; --raw prints the "
    "index itself either way."
)
@option("--from", "from_store", metavar="STORE", help="Inspect the image as archived in STORE.")
@endpoint_option("S3-compatible or OSS endpoint (with --from).")
@store_options
@registry_options
@handles_errors
def inspect_command(
    image: str,
    raw: bool,
    show_config: bool,
    no_tags: bool,
    platform: Platform | None,
    from_store: str | None,
    endpoint_url: str | None,
    client: ClientFlags,
) -> None:
    """skopeo inspect's JSON for IMAGE (docker://host/repo:tag, or a bare reference).

    With --from STORE the image is read from the archive (its tags are the archived ones).
    """
    from contextlib import AbstractContextManager, nullcontext

    from pipeline.cli.runtime import open_bucket
    from pipeline.ops import inspect as ops
    from pipeline.refs import Reference
    from pipeline.registry.source import RegistrySource

    ref = Reference.parse(image)
    context: AbstractContextManager[object]
    source: ops.ManifestSource
    if from_store:
        bucket = open_bucket(from_store, endpoint_url)
        context, source = nullcontext(), bucket.image(ref)
        tags = lambda: bucket.tags(ref.store_repo)  # noqa: E731
    else:
        context = registry = registry_client(ref.registry, client)
        source = RegistrySource(registry, ref)
        tags = lambda: registry.list_tags(ref.repository)  # noqa: E731
    with context, naming(image, AuthError):
        if raw and not show_config:
            out: bytes | str = ops.raw_manifest(source)
        elif raw:
            out = ops.raw_config(source, platform=platform)
        elif show_config:
            out = ops.render_json(ops.image_config(source, platform=platform))
        else:
            info = ops.inspect_source(
                source, name=ref.name, tags=None if no_tags else tags, platform=platform
            )
            out = ops.render_json(info)
    _write(out)


@examples(
    "bale list-tags docker://registry.example.com/team/app",
    "bale list-tags --creds alice:secret docker://registry.example.com/team/app",
)
@click.command("list-tags", cls=SkopeoCommand)
@click.argument("repository")
@registry_options
@handles_errors
def list_tags_command(repository: str, client: ClientFlags) -> None:
    """skopeo list-tags' JSON for REPOSITORY (docker://host/repo, no tag)."""
    from pipeline.ops import inspect as ops
    from pipeline.refs import parse_repository

    ref = parse_repository(repository)
    registry = registry_client(ref.registry, client)
    with registry, naming(repository, AuthError):
        out = ops.render_json(ops.tag_list(ref, registry))
    sys.stdout.write(out)
    sys.stdout.flush()
