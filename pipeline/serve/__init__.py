"""`bale serve`: push-event intake, a queue, the catalog and a read-only registry over the archive.

catalog.py         the catalog's pages and `/api/` JSON (templates/ holds its Jinja2 pages)
catalog_index.py   what the catalog shows, in memory, refreshed from store listings
registry_api.py    the read-only `/v2/` API over the bucket's registry layout
registry_auth.py   who may read through `/v2/`: htpasswd (bcrypt) or bearer tokens
objects.py         one stored object as an answer: presigned redirect or streamed, with Range
"""
