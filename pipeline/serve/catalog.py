"""The catalog: what the archive holds, as pages for people and as JSON for scripts.

    /                                   repositories: tags, sizes (stored, unique after dedup), last archived
    /repos/<repo>                       one repository's images: digest, platforms, class, date, source, signed
    /images                             every image, searchable across repositories
    /images/<repo>/<tag or digest>      one image: manifests and layers, restore/copy/pull commands, download
    /download/<repo>/<tag>.tar          the image's tar: 307 to a presigned URL (S3, OSS) or streamed (local)
    /api/repositories[/<repo>], /api/images[/<repo>/<ref>]   the same data as JSON

Lists take `q` (a case-insensitive substring of the name), `sort`, `order` (asc, desc),
`page` (from 1) and `per_page`. Everything a list shows comes from the in-memory snapshot of
`CatalogIndex` (catalog_index.py), so a page costs no store request; an image's page reads its
manifests (a few small objects). One JSON shape per thing: the pages render the same
dictionaries the API returns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from pipeline.archive import layout
from pipeline.archive.bucket import ArchiveBucket
from pipeline.archive.record import format_time
from pipeline.errors import BaleError, ObjectFrozen, StoreNotFound
from pipeline.oci import (
    DOCKER_CONFIG,
    INDEX_TYPES,
    OCI_CONFIG,
    Descriptor,
    ImageIndex,
    ImageManifest,
    Platform,
    RawManifest,
)
from pipeline.serve.catalog_index import CatalogImage, CatalogIndex, RepoSummary, Snapshot
from pipeline.serve.objects import RangeNotSatisfiable, serve_object
from pipeline.serve.registry_auth import Authenticator, RegistryAuth
from pipeline.store.base import ObjectStore
from pipeline.units import format_size

TEMPLATES = Path(__file__).with_name("templates")
PER_PAGE = 50
MAX_PER_PAGE = 500
MAX_CONFIG_BYTES = 1024 * 1024

T = TypeVar("T")

REPO_SORTS: dict[str, Callable[[RepoSummary], Any]] = {
    "name": lambda r: r.repo,
    "images": lambda r: r.images,
    "tags": lambda r: r.tags,
    "stored": lambda r: r.stored_bytes,
    "unique": lambda r: r.unique_bytes,
    "tar": lambda r: r.tar_bytes,
    "last": lambda r: r.last_archived,
}
IMAGE_SORTS: dict[str, Callable[[CatalogImage], Any]] = {
    "name": lambda i: (i.repo, i.ref),
    "tag": lambda i: i.ref,
    "date": lambda i: i.record.archived_at,
    "size": lambda i: i.record.tar_size,
    "stored": lambda i: i.record.blob_bytes,
}


@dataclass(frozen=True)
class ListQuery:
    """A list's search, sort and page, from the query string (bad values fall back)."""

    q: str
    sort: str
    descending: bool
    page: int
    per_page: int

    @classmethod
    def parse(cls, request: Request, sorts: Sequence[str], default: str) -> ListQuery:
        params = request.query_params
        sort = params.get("sort", default)
        if sort not in sorts:
            sort = default
        order = params.get("order", "")
        descending = order == "desc" if order in ("asc", "desc") else sort in ("last", "date")
        return cls(
            q=params.get("q", "").strip(),
            sort=sort,
            descending=descending,
            page=max(1, _int(params.get("page"), 1)),
            per_page=min(MAX_PER_PAGE, max(1, _int(params.get("per_page"), PER_PAGE))),
        )

    def apply(
        self,
        items: Sequence[T],
        name: Callable[[T], str],
        key: Callable[[T], Any],
        orders: dict[Any, list[Any]] | None = None,
        what: str = "",
    ) -> dict[str, Any]:
        """Sort, filter and slice `items`; the page and what a pager needs. With `orders` (a
        snapshot's memo), each sort of `what` is made once per snapshot, not per page load."""
        memo = (what, self.sort, self.descending)
        ordered = orders.get(memo) if orders is not None else None
        if ordered is None:
            ordered = sorted(items, key=key, reverse=self.descending)
            if orders is not None:
                orders[memo] = ordered
        needle = self.q.lower()
        found = [i for i in ordered if needle in name(i).lower()] if needle else ordered
        pages = max(1, math.ceil(len(found) / self.per_page))
        page = min(self.page, pages)
        start = (page - 1) * self.per_page
        return {
            "total": len(found),
            "page": page,
            "pages": pages,
            "per_page": self.per_page,
            "q": self.q,
            "sort": self.sort,
            "order": "desc" if self.descending else "asc",
            "items": found[start : start + self.per_page],
        }


def _epoch_time(when: float) -> str:
    """A queue time (seconds since the epoch, 0 for never) as the catalog writes times."""
    return format_time(datetime.fromtimestamp(when, UTC)) if when else "-"


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


# -- the JSON shapes (also what the templates render) -----------------------------------------


def repo_json(repo: RepoSummary) -> dict[str, Any]:
    return {
        "repository": repo.repo,
        "images": repo.images,
        "tags": repo.tags,
        "stored_bytes": repo.stored_bytes,
        "unique_bytes": repo.unique_bytes,
        "tar_bytes": repo.tar_bytes,
        "last_archived": format_time(repo.last_archived),
        "registries": list(repo.registries),
    }


def image_json(item: CatalogImage) -> dict[str, Any]:
    r = item.record
    return {
        "repository": item.repo,
        "ref": item.ref,
        "tag": r.tag,
        "source": r.source,
        "digest": r.digest,
        "media_type": r.media_type,
        "platforms": list(r.stored_platforms or r.platforms),
        "tar_platforms": list(r.platforms),
        "storage_class": item.storage_class,
        "archived_at": format_time(r.archived_at),
        "tar_key": r.tar_key,
        "tar_digest": r.tar_digest,
        "tar_size": r.tar_size,
        "tar_present": item.tar_present,
        "stored_bytes": r.blob_bytes,
        "signed": "signature" in item.artifacts,
        "attested": "attestation" in item.artifacts,
        "artifacts": list(item.artifacts),
        "version": r.version,
        "download": f"/download/{item.repo}/{item.tar_name}",
        "page": f"/images/{item.repo}/{item.ref}",
    }


def manifests_json(bucket: ArchiveBucket, item: CatalogImage) -> list[dict[str, Any]]:
    """The image's manifests as stored: the top one, and for an index each platform's (those
    not kept in the store are listed without layers)."""
    out: list[dict[str, Any]] = []

    def describe(raw: RawManifest, platform: str | None) -> dict[str, Any]:
        parsed = raw.parse()
        entry: dict[str, Any] = {
            "digest": raw.digest,
            "media_type": raw.media_type,
            "size": len(raw.data),
            "platform": platform,
        }
        if isinstance(parsed, ImageManifest):
            if platform is None and parsed.config.media_type in (OCI_CONFIG, DOCKER_CONFIG):
                entry["platform"] = _config_platform(bucket, parsed.config)
            entry["config"] = parsed.config.to_json()
            entry["layers"] = [d.to_json() for d in parsed.layers]
            entry["layers_bytes"] = sum(d.size for d in parsed.layers)
        return entry

    top = bucket.read_manifest(item.record.digest)
    out.append(describe(top, None))
    parsed = top.parse()
    if isinstance(parsed, ImageIndex):
        for child in parsed.manifests:
            platform = str(child.platform) if child.platform is not None else None
            try:
                out.append(describe(bucket.read_manifest(child.digest), platform))
            except StoreNotFound:
                out.append(
                    {
                        "digest": child.digest,
                        "media_type": child.media_type,
                        "size": child.size,
                        "platform": platform,
                        "stored": False,
                    }
                )
    return out


def _config_platform(bucket: ArchiveBucket, config: Descriptor) -> str | None:
    """A lone manifest's platform, from its config (records list platforms of indexes only)."""
    if config.size > MAX_CONFIG_BYTES:
        return None
    try:
        obj = json.loads(bucket.read_blob(config))
    except (BaleError, ValueError):
        return None
    if not isinstance(obj, dict) or not obj.get("os") or not obj.get("architecture"):
        return None
    return str(Platform.from_json(obj))


def commands_json(store: ObjectStore, item: CatalogImage, pull_host: str) -> dict[str, str]:
    """How to get the image back: restore (registry), copy (from the tar), or pull from here."""
    r = item.record
    name = r.reference.repository
    target = f"{r.tag}" if r.tag else r.digest
    sep = ":" if r.tag else "@"
    here = f"{pull_host}/{item.repo}{sep}{target}"
    # a tar of several platforms holds them in its OCI index: only oci-archive reads them all
    tar = "oci-archive" if r.tar_media_type in INDEX_TYPES else "docker-archive"
    location = store.describe(r.tar_key)
    return {
        "restore": f"bale restore {r.source} docker://REGISTRY/{name} --from {store.url}",
        "copy": f"bale copy {tar}:{location} docker://REGISTRY/{name}{sep}{target}",
        "pull": f"podman pull --tls-verify=false {here}",
        "skopeo": f"skopeo copy --src-tls-verify=false docker://{here} oci-archive:{item.tar_name}",
    }


# -- the app's routes -------------------------------------------------------------------------


class Catalog:
    """The catalog's handlers over one store and its index."""

    def __init__(
        self,
        store: ObjectStore,
        index: CatalogIndex | None = None,
        auth: RegistryAuth | None = None,
    ) -> None:
        self.store = store
        self.auth = auth or RegistryAuth()
        self.authenticator = Authenticator(self.auth)
        self.bucket = ArchiveBucket(store)
        self.index = index or CatalogIndex(store)
        self.templates = Environment(
            loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"])
        )
        self.templates.filters["size"] = format_size
        self.templates.filters["epoch"] = _epoch_time

    def routes(self) -> list[BaseRoute]:
        guard = self._guarded
        return [
            Route("/", guard(self.home)),
            Route("/repos/{repo:path}", guard(self.repository)),
            Route("/images", guard(self.images)),
            Route("/images/{repo:path}/{ref}", guard(self.image)),
            Route("/download/{repo:path}/{name}", guard(self.download), methods=["GET", "HEAD"]),
            Route("/api/repositories", guard(self.home)),
            Route("/api/repositories/{repo:path}", guard(self.repository)),
            Route("/api/images", guard(self.images)),
            Route("/api/images/{repo:path}/{ref}", guard(self.image)),
        ]

    def _guarded(self, handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        """`handler` behind the registry's credentials: whoever may pull an image may see it
        listed and download its tar, and nobody else (a browser asks for Basic credentials)."""

        def endpoint(request: Request) -> Response:
            if not self.authenticator.allows(request.headers.get("authorization")):
                return PlainTextResponse(
                    "authentication required\n",
                    status_code=401,
                    headers={"WWW-Authenticate": self.auth.challenge()},
                )
            return handler(request)

        return endpoint

    def page(
        self, handler: Callable[[Request], tuple[str, dict[str, Any]]]
    ) -> Callable[[Request], Response]:
        """A page of another module (the queue's) in the catalog's look and behind its guard:
        `handler` names the template and gives its data."""
        return self._guarded(lambda request: self._render(request, *handler(request)))

    def _render(
        self,
        request: Request,
        template: str,
        data: dict[str, Any],
        status: int = 200,
        *,
        name: str | None = None,
    ) -> Response:
        """`data` as JSON under `/api/`, else rendered into `template` (as the variable `name`
        when given, else as its keys)."""
        if request.url.path.startswith("/api/"):
            return JSONResponse(data, status_code=status)
        context = {name: data} if name else data
        html = self.templates.get_template(template).render(
            **context, store=self.store.url, path=request.url.path
        )
        return HTMLResponse(html, status_code=status)

    def _common(self, snap: Snapshot) -> dict[str, Any]:
        t = snap.totals
        return {
            "totals": {
                "repositories": t.repos,
                "images": t.images,
                "stored_bytes": t.stored_bytes,
                "unique_bytes": t.unique_bytes,
                "tar_bytes": t.tar_bytes,
            },
            "problems": list(snap.problems),
        }

    def _missing(self, request: Request, what: str) -> Response:
        return self._render(
            request, "missing.html", {"error": f"{what} is not in the archive"}, 404
        )

    def home(self, request: Request) -> Response:
        snap = self.index.snapshot()
        query = ListQuery.parse(request, list(REPO_SORTS), "name")
        listed = query.apply(
            snap.repos, lambda r: r.repo, REPO_SORTS[query.sort], snap.orders, "repos"
        )
        listed["items"] = [repo_json(r) for r in listed["items"]]
        return self._render(request, "index.html", {**self._common(snap), **listed})

    def repository(self, request: Request) -> Response:
        repo = request.path_params["repo"]
        snap = self.index.snapshot()
        summary = next((r for r in snap.repos if r.repo == repo), None)
        if summary is None:
            return self._missing(request, f"repository {repo}")
        query = ListQuery.parse(request, list(IMAGE_SORTS), "tag")
        listed = query.apply(snap.by_repo.get(repo, ()), lambda i: i.ref, IMAGE_SORTS[query.sort])
        listed["items"] = [image_json(i) for i in listed["items"]]
        data = {**self._common(snap), **listed, "repository": repo_json(summary)}
        return self._render(request, "repo.html", data)

    def images(self, request: Request) -> Response:
        snap = self.index.snapshot()
        query = ListQuery.parse(request, list(IMAGE_SORTS), "name")
        listed = query.apply(
            snap.images,
            lambda i: f"{i.repo}:{i.ref}",
            IMAGE_SORTS[query.sort],
            snap.orders,
            "images",
        )
        listed["items"] = [image_json(i) for i in listed["items"]]
        return self._render(request, "images.html", {**self._common(snap), **listed})

    def image(self, request: Request) -> Response:
        repo, ref = request.path_params["repo"], request.path_params["ref"]
        item = self.index.snapshot().image(repo, ref)
        if item is None:
            item = self._fresh(repo, ref)
        if item is None:
            return self._missing(request, f"image {repo}:{ref}")
        data = image_json(item)
        try:
            data["manifests"] = manifests_json(self.bucket, item)
        except BaleError as exc:
            data["manifests"] = []
            data["manifest_error"] = str(exc)
        data["commands"] = commands_json(self.store, item, request.url.netloc)
        return self._render(request, "image.html", data, name="image")

    def _fresh(self, repo: str, ref: str) -> CatalogImage | None:
        """An image archived since the snapshot: one refresh, then look again."""
        return self.index.refresh().image(repo, ref)

    def download(self, request: Request) -> Response:
        repo, name = request.path_params["repo"], request.path_params["name"]
        parsed = layout.parse_image_key(f"{layout.IMAGES_PREFIX}{repo}/{name}")
        if parsed is None or parsed.kind != "tar":
            return self._missing(request, f"tar {repo}/{name}")
        try:
            return serve_object(
                self.store,
                parsed.key,
                request,
                {},
                filename=f"{repo.replace('/', '_')}_{name}",
                content_type="application/x-tar",
            )
        except StoreNotFound:
            return self._missing(request, f"tar {repo}/{name}")
        except (ObjectFrozen, RangeNotSatisfiable) as exc:
            status = 416 if isinstance(exc, RangeNotSatisfiable) else 409
            return self._render(request, "missing.html", {"error": str(exc)}, status)


def catalog_routes(
    store: ObjectStore, *, index: CatalogIndex | None = None, auth: RegistryAuth | None = None
) -> list[BaseRoute]:
    """The catalog's pages and JSON over `store`. Give `registry_routes` the same `index` (one
    snapshot, one refresh) and the same `auth` (what may be pulled may be listed)."""
    return Catalog(store, index, auth).routes()
