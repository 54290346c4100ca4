"""Object stores: one ObjectStore interface, local / S3 / OSS backends, URL parsing.

    base.py       the ObjectStore protocol and its value types (the contract)
    url.py        store URLs and object LOCATIONs → configured stores (`open_store`, `open_location`)
    local.py      a directory; S3 in s3.py (boto3); OSS in oss.py (oss2)
    remote.py     what S3 and OSS share: one store built on a bucket's calls, hooks per provider
    multipart.py  the streaming multipart writer S3 and OSS share (part sizes, bounded pool, abort)
    compose.py    server-side compose: planning parts from inline bytes and stored ranges
    source.py     reading a caller's stream in whole parts, held to its declared size
    keys.py       key validation and prefix joining

Import the backend you need from its module; this package imports nothing on purpose, so that
`pipeline.store.base` stays cheap for the modules that only need its types.
"""
