"""Case e, the limits: what the hardware and the servers allow, with no bale code involved.

Run as its own process (`python -m bench.limits KIND ...`), one JSON line on stdout with the
seconds of the transfer itself (start-up and imports excluded, so a contender's ratio to a limit
is if anything pessimistic):

- `get HOST REPO JOBS DIGEST...`: plain urllib3 streaming GETs of the blobs to nowhere, `JOBS`
  at a time (as many as bale's `--jobs`), no hashing;
- `put BUCKET JOBS FILE...`: plain boto3 `upload_file` (its default multipart settings) of
  the same blob files, `JOBS` files at a time;
- `sha256 MIB`: hashlib SHA-256 over MIB mebibytes on one core;
- `write FILE MIB`: MIB mebibytes from memory to FILE in 1 MiB writes, then fsync (reported
  apart): the floor of any tar written to that disk.

`put` also times a plain server-side copy of its largest object (one UploadPartCopy and the
completion): what composing a tar from a stored blob costs the server.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import urllib3

CHUNK = 1 << 20


def get(host: str, repo: str, jobs: int, digests: list[str]) -> dict[str, float]:
    pool = urllib3.PoolManager(maxsize=max(1, jobs), retries=False)

    def one(digest: str) -> int:
        resp = pool.request(
            "GET",
            f"http://{host}/v2/{repo}/blobs/{digest}",
            headers={"Accept-Encoding": "identity"},
            preload_content=False,
            decode_content=False,
        )
        if resp.status != 200:
            raise SystemExit(f"GET {digest}: HTTP {resp.status}")
        n = 0
        while True:
            data = resp.read(CHUNK)
            if not data:
                break
            n += len(data)
        resp.release_conn()
        return n

    started = time.perf_counter()
    with ThreadPoolExecutor(max(1, jobs)) as ex:
        total = sum(ex.map(one, digests))
    return {"seconds": time.perf_counter() - started, "bytes": total}


def put(bucket: str, jobs: int, files: list[str]) -> dict[str, float]:
    import boto3
    import botocore.config

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=32,
        ),
    )
    client.head_bucket(Bucket=bucket)  # connection and credentials before the clock starts
    total = sum(Path(f).stat().st_size for f in files)
    started = time.perf_counter()
    with ThreadPoolExecutor(max(1, jobs)) as ex:
        list(ex.map(lambda f: client.upload_file(f, bucket, f"limit/{Path(f).name}"), files))
    seconds = time.perf_counter() - started
    largest = max(files, key=lambda f: Path(f).stat().st_size)
    size = Path(largest).stat().st_size
    copy_seconds = 0.0
    if size > 5 << 20:
        started = time.perf_counter()
        upload = client.create_multipart_upload(Bucket=bucket, Key="limit-copy")["UploadId"]
        part = client.upload_part_copy(
            Bucket=bucket,
            Key="limit-copy",
            UploadId=upload,
            PartNumber=1,
            CopySource={"Bucket": bucket, "Key": f"limit/{Path(largest).name}"},
        )
        client.complete_multipart_upload(
            Bucket=bucket,
            Key="limit-copy",
            UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]},
        )
        copy_seconds = time.perf_counter() - started
    return {"seconds": seconds, "bytes": total, "copy_seconds": copy_seconds, "copy_bytes": size}


def write(path: str, mib: int) -> dict[str, float]:
    block = os.urandom(CHUNK)
    started = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
        f.flush()
        written = time.perf_counter()
        os.fsync(f.fileno())
    done = time.perf_counter()
    os.unlink(path)
    return {"seconds": written - started, "bytes": mib * CHUNK, "fsync_seconds": done - written}


def sha256(mib: int) -> dict[str, float]:
    block = os.urandom(16 * CHUNK)
    h = hashlib.sha256()
    h.update(block)  # warm up
    h = hashlib.sha256()
    rounds = max(1, mib // 16)
    started = time.perf_counter()
    for _ in range(rounds):
        h.update(block)
    h.hexdigest()
    return {"seconds": time.perf_counter() - started, "bytes": rounds * len(block)}


def main(argv: list[str]) -> None:
    kind, args = argv[0], argv[1:]
    if kind == "get":
        out = get(args[0], args[1], int(args[2]), args[3:])
    elif kind == "put":
        out = put(args[0], int(args[1]), args[2:])
    elif kind == "sha256":
        out = sha256(int(args[0]))
    elif kind == "write":
        out = write(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown limit {kind}")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
