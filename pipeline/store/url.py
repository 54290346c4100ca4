"""Store URLs and object locations, parsed in one place, exactly as DESIGN's Stores table says.

    s3://bucket[/prefix]     boto3; the standard AWS credential chain; `--endpoint-url` or
                             AWS_ENDPOINT_URL (AWS_ENDPOINT_URL_S3) for S3-compatible servers;
                             AWS_S3_ADDRESSING_STYLE (path, virtual, auto), AWS_REGION,
                             AWS_CA_BUNDLE (the CLI's store options set these)
    oss://bucket[/prefix]    oss2; OSS_ENDPOINT (or `--endpoint-url`), OSS_ACCESS_KEY_ID,
                             OSS_ACCESS_KEY_SECRET, OSS_SESSION_TOKEN, OSS_REGION (V4 signing)
    file:///dir, or a path   a local directory

A single object (`bale copy … docker-archive:s3://bucket/key`) is a LOCATION: the same schemes,
where everything after the bucket is the key, or a local file path.
Bad URLs are `InvalidStoreURL` (exit 2) before anything is contacted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict
from urllib.parse import unquote, urlsplit

from pipeline.errors import InvalidStoreURL, StoreError, UsageError
from pipeline.store import keys
from pipeline.store.base import ObjectStore
from pipeline.store.encryption import NONE, Encryption
from pipeline.transfer.retry import RetryPolicy

SCHEMES = ("s3", "oss", "file")
S3_ADDRESSING = ("path", "virtual", "auto")

_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL. For `file`, `bucket` is empty and `prefix` is the absolute directory."""

    scheme: str
    bucket: str
    prefix: str

    def __str__(self) -> str:
        if self.scheme == "file":
            return Path(self.prefix).as_uri()
        tail = f"/{self.prefix}" if self.prefix else ""
        return f"{self.scheme}://{self.bucket}{tail}"


@dataclass(frozen=True)
class ObjectLocation:
    """One object: the store that holds it and its key there."""

    store: StoreURL
    key: str

    def __str__(self) -> str:
        if self.store.scheme == "file":
            return str(Path(self.store.prefix) / self.key)
        return f"{self.store}/{self.key}"


_USERINFO_RE = re.compile(r"//[^/@]*@")


def _shown(text: str) -> str:
    """`text` fit for a message: any `user:secret@` taken out."""
    return _USERINFO_RE.sub("//***@", text)


def _split_remote(text: str, scheme: str) -> tuple[str, str]:
    """Bucket and path of `s3://bucket/path`, refusing what a bucket URL cannot contain."""
    parts = urlsplit(text)
    if parts.query or parts.fragment or "@" in parts.netloc or ":" in parts.netloc:
        raise InvalidStoreURL(
            f"invalid store URL {_shown(text)!r}: only {scheme}://bucket[/prefix]"
        )
    bucket = parts.netloc
    if not bucket:
        raise InvalidStoreURL(f"store URL {_shown(text)!r} has no bucket")
    if not _BUCKET_RE.match(bucket):
        raise InvalidStoreURL(f"store URL {_shown(text)!r}: invalid bucket name {bucket!r}")
    return bucket, unquote(parts.path)


_LOOKS_LIKE_SCHEME = frozenset(
    {
        *SCHEMES,
        *("gs", "gcs", "az", "azure", "abfs", "cos", "obs", "r2", "minio", "swift", "hdfs"),
        *("http", "https", "ftp", "sftp", "webdav", "docker", "oci", "oci-archive"),
        *("docker-archive", "dir", "containers-storage", "docker-daemon"),
    }
)
"""First path components that, followed by an empty one (`s3//bucket/x`), are a URL missing
its colon rather than a directory anyone meant to create."""


def _refuse_mistyped_url(text: str) -> None:
    """`s3//bucket/x` would quietly become the directory ./s3/bucket/x: refuse it (exit 2) and
    say what was probably meant. `./s3//x` says a local path was meant, and stays allowed."""
    first, sep, rest = text.partition("//")
    if not sep or "/" in first or first.lower() not in _LOOKS_LIKE_SCHEME:
        return
    scheme = first.lower()
    meant = f"file:///{rest.lstrip('/')}" if scheme == "file" else f"{scheme}://{rest}"
    raise InvalidStoreURL(
        f"{_shown(text)!r} looks like a URL without its colon: did you mean {_shown(meant)}? "
        f"(for a local directory write ./{_shown(text)})"
    )


def _local_dir(text: str) -> str:
    if text.startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise InvalidStoreURL(f"invalid file URL {_shown(text)!r}: use file:///absolute/dir")
        path = unquote(parts.path)
        if not path:
            raise InvalidStoreURL(f"file URL {_shown(text)!r} has no directory")
    else:
        _refuse_mistyped_url(text)
        path = text
    return str(Path(path).expanduser().absolute())


def _scheme(text: str) -> str | None:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?", text)
    if m is None:
        return None
    scheme = m.group(1).lower()
    if scheme in ("s3", "oss") and not m.group(2):
        raise InvalidStoreURL(f"invalid store URL {_shown(text)!r}: use {scheme}://bucket[/prefix]")
    if scheme != "file" and not m.group(2):
        return None  # a plain path that happens to contain ':'

    if scheme not in SCHEMES:
        raise InvalidStoreURL(
            f"unsupported store URL {_shown(text)!r}: use s3://, oss://, file:// or a path"
        )
    return scheme


def parse_store_url(url: str) -> StoreURL:
    """Parse a store URL (`s3://bucket[/prefix]`, `oss://…`, `file:///dir`, or a path)."""
    text = url.strip()
    if not text:
        raise InvalidStoreURL("empty store URL")
    scheme = _scheme(text)
    if scheme in ("s3", "oss"):
        bucket, path = _split_remote(text, scheme)
        try:
            prefix = keys.normalize_prefix(path)
        except StoreError:
            raise InvalidStoreURL(f"store URL {_shown(url)!r}: invalid prefix {path!r}") from None
        return StoreURL(scheme, bucket, prefix)
    return StoreURL("file", "", _local_dir(text))


def parse_location(location: str) -> ObjectLocation:
    """Parse one object's LOCATION: `s3://bucket/key`, `oss://bucket/key`, `file:///path` or a
    local path. `-` (stdin/stdout) is the caller's business and is refused here."""
    text = location.strip()
    if not text or text == "-":
        raise InvalidStoreURL(f"invalid object location {_shown(location)!r}")
    scheme = _scheme(text)
    if scheme in ("s3", "oss"):
        bucket, path = _split_remote(text, scheme)
        key = path.lstrip("/")
        if not key:
            raise InvalidStoreURL(
                f"object location {_shown(location)!r} has no key after the bucket"
            )
        try:
            keys.check_key(key)
        except StoreError:
            raise InvalidStoreURL(
                f"object location {_shown(location)!r}: invalid key {key!r}"
            ) from None
        return ObjectLocation(StoreURL(scheme, bucket, ""), key)
    if text.endswith("/"):
        raise InvalidStoreURL(f"object location {_shown(location)!r} is a directory, not a file")
    local = Path(_local_dir(text))
    return ObjectLocation(StoreURL("file", "", str(local.parent)), local.name)


Access = Literal["read", "write"]


def open_store(
    url: str | StoreURL,
    *,
    endpoint_url: str | None = None,
    retry: RetryPolicy | None = None,
    parallel: int | None = None,
    part_size: int | None = None,
    env: Mapping[str, str] | None = None,
    check: Access | None = None,
    encryption: Encryption = NONE,
) -> ObjectStore:
    """The store for `url`, configured from the arguments and the environment as DESIGN's Stores
    table says. Nothing is contacted, unless `check` asks to prove first that the store can be
    read (or written): then a store that cannot raises StoreUnusable (exit 2), once.

    `encryption` (encryption.py) is applied to every write, and for SSE-C to every read; one
    the store's kind cannot do (any on a local directory, SSE-C on OSS) is a UsageError here.

    `env` (default `os.environ`) supplies the endpoint and OSS variables; S3 credentials always
    come from boto3's standard chain (environment, profiles, instance roles).
    """
    store = _configured(url, endpoint_url, retry, parallel, part_size, env, encryption)
    if check is not None:
        store.check(write=check == "write")
    return store


class _Tuning(TypedDict, total=False):
    """What the command line overrides of a remote store's defaults."""

    parallel: int
    part_size: int


def _configured(
    url: str | StoreURL,
    endpoint_url: str | None,
    retry: RetryPolicy | None,
    parallel: int | None,
    part_size: int | None,
    env: Mapping[str, str] | None,
    encryption: Encryption = NONE,
) -> ObjectStore:
    parsed = url if isinstance(url, StoreURL) else parse_store_url(url)
    encryption.check_for(parsed.scheme)
    env = os.environ if env is None else env
    tuning: _Tuning = {}
    if parallel is not None:
        tuning["parallel"] = parallel
    if part_size is not None:
        tuning["part_size"] = part_size

    if parsed.scheme == "s3":
        from pipeline.store.s3 import S3Store

        endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        addressing = env.get("AWS_S3_ADDRESSING_STYLE") or None
        if addressing is not None and addressing not in S3_ADDRESSING:
            raise UsageError(
                f"S3 addressing {addressing!r} (AWS_S3_ADDRESSING_STYLE): use path, virtual or auto"
            )
        ca_bundle = env.get("AWS_CA_BUNDLE") or None
        if ca_bundle is not None and not Path(ca_bundle).is_file():
            raise UsageError(
                f"store CA bundle {ca_bundle} (--store-ca-bundle, AWS_CA_BUNDLE) is not a file"
            )
        return S3Store(
            parsed.bucket,
            parsed.prefix,
            endpoint_url=endpoint or None,
            region=env.get("AWS_REGION") or None,
            addressing=addressing,
            ca_bundle=ca_bundle,
            retry=retry,
            encryption=encryption,
            **tuning,
        )

    if parsed.scheme == "oss":
        from pipeline.store.oss import OSSStore

        endpoint = endpoint_url or env.get("OSS_ENDPOINT")
        if not endpoint:
            raise InvalidStoreURL(f"{parsed} needs an endpoint: set OSS_ENDPOINT or --endpoint-url")
        return OSSStore(
            parsed.bucket,
            parsed.prefix,
            endpoint=endpoint,
            access_key_id=env.get("OSS_ACCESS_KEY_ID") or None,
            access_key_secret=env.get("OSS_ACCESS_KEY_SECRET") or None,
            security_token=env.get("OSS_SESSION_TOKEN") or None,
            region=env.get("OSS_REGION") or None,
            retry=retry,
            encryption=encryption,
            **tuning,
        )

    from pipeline.store.local import LocalStore

    return LocalStore(parsed.prefix)


def open_location(
    location: str | ObjectLocation,
    *,
    endpoint_url: str | None = None,
    retry: RetryPolicy | None = None,
    parallel: int | None = None,
    part_size: int | None = None,
    env: Mapping[str, str] | None = None,
    check: Access | None = None,
    encryption: Encryption = NONE,
) -> tuple[ObjectStore, str]:
    """The store holding one object LOCATION, and the object's key in it (`check` and
    `encryption` as for `open_store`)."""
    parsed = location if isinstance(location, ObjectLocation) else parse_location(location)
    store = open_store(
        parsed.store,
        endpoint_url=endpoint_url,
        retry=retry,
        parallel=parallel,
        part_size=part_size,
        env=env,
        check=check,
        encryption=encryption,
    )
    return store, parsed.key
