"""A read-only registry (`/v2/`, the OCI distribution API) over the archive bucket.

The bucket already has the registry's storage layout (DESIGN, Bucket layout), so this serves
what a stock registry given the same bucket would: manifests by tag through the tag's
`current/link`, by digest through the repository's revision link, blobs through its layer
links. Manifests go out as the exact bytes stored, under their own digest. Blobs are
redirected (307) to a presigned store URL when the store can presign, so layer bytes go from
the bucket to the client directly; from a local store they are streamed, with `Range`.

What a pull needs and nothing more: `GET /v2/`, manifests (HEAD, GET), blobs (HEAD, GET),
tag lists, `_catalog`, and the referrers API (from the `sha256-<hex>` fallback index where
bale keeps OCI referrers, ops/referrers.py). Every write method answers 405 with the spec's
`UNSUPPORTED` error body, before authentication: the answer is the same for anyone.

Errors are the spec's JSON (`{"errors": [{"code", "message", "detail"}]}`).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket
from pipeline.errors import InvalidReference, ObjectFrozen, StoreError, StoreNotFound
from pipeline.oci import (
    DEFAULT_PLATFORM,
    INDEX_TYPES,
    OCI_INDEX,
    Descriptor,
    ImageIndex,
    RawManifest,
    choose_platform,
)
from pipeline.ops.referrers import fallback_tag, index_entries
from pipeline.refs import is_valid_digest, is_valid_repository, is_valid_tag
from pipeline.serve.catalog_index import CatalogIndex
from pipeline.serve.objects import PRESIGN_SECONDS, RangeNotSatisfiable, serve_object
from pipeline.serve.registry_auth import Authenticator, RegistryAuth
from pipeline.store.base import ObjectStore

log = logging.getLogger("bale.serve")

API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
READ_METHODS = ("GET", "HEAD")
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
DEFAULT_PAGE = 1000
"""Entries of `_catalog` and `tags/list` per page when the client gives no `n`."""

_ROUTES = (
    ("manifest", re.compile(r"^(?P<name>.+)/manifests/(?P<ref>[^/]+)$")),
    ("blob", re.compile(r"^(?P<name>.+)/blobs/(?P<ref>[^/]+)$")),
    ("tags", re.compile(r"^(?P<name>.+)/tags/list$")),
    ("referrers", re.compile(r"^(?P<name>.+)/referrers/(?P<ref>[^/]+)$")),
)


class ApiError(Exception):
    """An answer in the distribution spec's error format."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return JSONResponse(
            {"errors": [error]},
            status_code=self.status,
            headers={API_VERSION[0]: API_VERSION[1], **(headers or {})},
        )


def _accepted(header: str | None) -> set[str] | None:
    """Media types the `Accept` headers list (clients send one header per type, or one list);
    None when they allow anything."""
    if not header:
        return None
    types = {part.split(";", 1)[0].strip().lower() for part in header.split(",")}
    types.discard("")
    if not types or "*/*" in types:
        return None
    return types


class ArchiveRegistry:
    """The `/v2/` handlers for one store (see the module docstring)."""

    def __init__(
        self,
        store: ObjectStore,
        auth: RegistryAuth | None = None,
        *,
        index: CatalogIndex | None = None,
        presign_seconds: int = PRESIGN_SECONDS,
    ) -> None:
        self.bucket = ArchiveBucket(store)
        self.store = store
        self.auth = auth or RegistryAuth()
        self.authenticator = Authenticator(self.auth)
        self.index = index or CatalogIndex(store)
        self.presign_seconds = presign_seconds

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v2/", self.handle, methods=ALL_METHODS),
            Route("/v2/{path:path}", self.handle, methods=ALL_METHODS),
        ]

    # -- dispatch --------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        try:
            try:
                return self._dispatch(request)
            except StoreError as exc:  # the store failed (gone, refused): say so, as JSON
                log.warning("/v2/ %s %s: %s", request.method, request.url.path, exc)
                raise ApiError(503, "UNAVAILABLE", "the archive cannot be read", str(exc)) from None
        except ApiError as exc:
            headers = {}
            if exc.status == 401:
                headers["WWW-Authenticate"] = self.auth.challenge()
            if request.method == "HEAD":
                return Response(
                    status_code=exc.status, headers={API_VERSION[0]: API_VERSION[1], **headers}
                )
            return exc.response(headers)

    def _dispatch(self, request: Request) -> Response:
        if request.method not in READ_METHODS:
            raise ApiError(
                405,
                "UNSUPPORTED",
                "The operation is unsupported.",
                f"this registry serves an archive read-only: {request.method} is not allowed",
            )
        if not self.authenticator.allows(request.headers.get("authorization")):
            raise ApiError(401, "UNAUTHORIZED", "authentication required")
        path = request.path_params.get("path", "")
        if path == "":
            return JSONResponse({}, headers=dict([API_VERSION]))
        if path == "_catalog":
            return self._catalog(request)
        for kind, pattern in _ROUTES:
            m = pattern.match(path)
            if m is None:
                continue
            name = m.group("name")
            if not is_valid_repository(name):
                raise ApiError(400, "NAME_INVALID", "invalid repository name", name)
            if kind == "manifest":
                return self._manifest(request, name, m.group("ref"))
            if kind == "blob":
                return self._blob(request, name, m.group("ref"))
            if kind == "tags":
                return self._tags(request, name)
            return self._referrers(request, name, m.group("ref"))
        raise ApiError(404, "NOT_FOUND", "no such endpoint", f"/v2/{path}")

    # -- manifests -------------------------------------------------------------------------
    def _read_manifest(self, name: str, digest: str) -> RawManifest:
        try:
            return self.bucket.read_manifest(digest)
        except ObjectFrozen:
            raise _frozen(digest) from None
        except (StoreNotFound, InvalidReference):  # no such blob, or a link holding no digest
            raise ApiError(404, "MANIFEST_UNKNOWN", "manifest unknown", digest) from None

    def _resolve(self, name: str, ref: str) -> str:
        """The digest a tag or digest names in repository `name`."""
        if ":" in ref:
            if not is_valid_digest(ref) or not ref.startswith("sha256:"):
                raise ApiError(400, "DIGEST_INVALID", "invalid digest", ref)
            if self.store.head(layout.revision_link_key(name, ref)) is None:
                raise ApiError(404, "MANIFEST_UNKNOWN", "manifest unknown", ref)
            return ref
        if not is_valid_tag(ref):
            raise ApiError(400, "TAG_INVALID", "invalid tag", ref)
        digest = self.bucket.tag_digest(name, ref)
        if digest is None:
            raise ApiError(404, "MANIFEST_UNKNOWN", "manifest unknown", f"{name}:{ref}")
        return digest

    def _manifest(self, request: Request, name: str, ref: str) -> Response:
        raw = self._read_manifest(name, self._resolve(name, ref))
        raw = self._negotiate(name, raw, _accepted(",".join(request.headers.getlist("accept"))))
        headers = {
            "Docker-Content-Digest": raw.digest,
            "Content-Type": raw.media_type,
            "Content-Length": str(len(raw.data)),
            "ETag": f'"{raw.digest}"',
            API_VERSION[0]: API_VERSION[1],
        }
        if request.method == "HEAD":
            return Response(headers=headers)
        return Response(raw.data, headers=headers, media_type=raw.media_type)

    def _negotiate(self, name: str, raw: RawManifest, accepted: set[str] | None) -> RawManifest:
        """The manifest to send for an `Accept` list: the stored one when allowed; for an index
        a client cannot take, its linux/amd64 manifest as distribution answers; else 404 as
        distribution does (never a converted manifest: that would change the digest)."""
        if accepted is None or raw.media_type in accepted:
            return raw
        if raw.media_type in INDEX_TYPES:
            parsed = raw.parse()
            assert isinstance(parsed, ImageIndex)
            entries = [d for d in parsed.manifests if d.media_type in accepted]
            chosen = choose_platform([d.platform for d in entries], [DEFAULT_PLATFORM])
            if chosen is not None:
                child = entries[chosen]
                if self.store.head(layout.revision_link_key(name, child.digest)) is not None:
                    return self._read_manifest(name, child.digest)
        raise ApiError(
            404,
            "MANIFEST_UNKNOWN",
            f"manifest is {raw.media_type}, which the Accept header does not allow",
            raw.digest,
        )

    # -- blobs -----------------------------------------------------------------------------
    def _blob(self, request: Request, name: str, digest: str) -> Response:
        if not is_valid_digest(digest) or not digest.startswith("sha256:"):
            raise ApiError(400, "DIGEST_INVALID", "invalid digest", digest)
        if self.store.head(layout.layer_link_key(name, digest)) is None:
            raise ApiError(404, "BLOB_UNKNOWN", "blob unknown to registry", digest)
        headers = {
            "Docker-Content-Digest": digest,
            "ETag": f'"{digest}"',
            API_VERSION[0]: API_VERSION[1],
        }
        try:
            return serve_object(
                self.store,
                layout.blob_key(digest),
                request,
                headers,
                presign_seconds=self.presign_seconds,
            )
        except StoreNotFound:
            raise ApiError(404, "BLOB_UNKNOWN", "blob unknown to registry", digest) from None
        except ObjectFrozen:
            raise _frozen(digest) from None
        except RangeNotSatisfiable as exc:
            raise ApiError(416, "RANGE_INVALID", "range not satisfiable", str(exc)) from None

    # -- lists -----------------------------------------------------------------------------
    def _tags(self, request: Request, name: str) -> Response:
        tags = self.bucket.tags(name)
        if not tags:
            raise ApiError(404, "NAME_UNKNOWN", "repository name not known to registry", name)
        page, link = _paginate(request, tags, f"/v2/{name}/tags/list")
        return JSONResponse({"name": name, "tags": page}, headers=_with_link(link))

    def _catalog(self, request: Request) -> Response:
        repos = [r.repo for r in self.index.snapshot().repos]
        page, link = _paginate(request, repos, "/v2/_catalog")
        return JSONResponse({"repositories": page}, headers=_with_link(link))

    def _referrers(self, request: Request, name: str, digest: str) -> Response:
        if not is_valid_digest(digest) or not digest.startswith("sha256:"):
            raise ApiError(400, "DIGEST_INVALID", "invalid digest", digest)
        entries: list[Descriptor] = []
        listed = self.bucket.tag_digest(name, fallback_tag(digest))
        if listed is not None:
            entries = index_entries(self._read_manifest(name, listed))
        headers = dict([API_VERSION])
        wanted = request.query_params.get("artifactType")
        if wanted:
            entries = [e for e in entries if e.artifact_type == wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        body = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [e.to_json() for e in entries],
        }
        return Response(json.dumps(body).encode(), headers=headers, media_type=OCI_INDEX)


def _frozen(digest: str) -> ApiError:
    return ApiError(
        403,
        "DENIED",
        "the object is in an archive storage class and not restored (bale thaw)",
        digest,
    )


def _paginate(request: Request, items: list[str], path: str) -> tuple[list[str], str | None]:
    """The spec's `n`/`last` pagination over a sorted list, and the next page's `Link`."""
    last = request.query_params.get("last")
    n_text = request.query_params.get("n")
    try:
        n = int(n_text) if n_text is not None else DEFAULT_PAGE
    except ValueError:
        raise ApiError(
            400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested", n_text
        ) from None
    if n < 0:
        raise ApiError(
            400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested", n_text
        )
    ordered = sorted(items)
    if last:
        ordered = [i for i in ordered if i > last]
    page = ordered[:n]
    if len(ordered) > n and page:
        return page, f'<{path}?n={n}&last={page[-1]}>; rel="next"'
    return page, None


def _with_link(link: str | None) -> dict[str, str]:
    headers = dict([API_VERSION])
    if link is not None:
        headers["Link"] = link
    return headers


def registry_routes(
    store: ObjectStore,
    auth: RegistryAuth | None = None,
    *,
    index: CatalogIndex | None = None,
) -> list[BaseRoute]:
    """The `/v2/` routes over `store`; `index` shares the catalog's (for `_catalog`)."""
    return ArchiveRegistry(store, auth, index=index).routes()
