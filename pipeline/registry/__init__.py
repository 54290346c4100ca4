"""Registry HTTP API v2 client: auth, credentials, manifests, blobs, uploads.

- `transport.RegistryTransport`: one per registry; the connections, the one auth loop
  (`request`, which can carry a streamed body), retries (`call`) and one-line errors (`check`),
  used by the pull and the push side alike. `wire`: the one place urllib3's internals are read.
- `client.RegistryClient`: one per registry, over a transport; manifests (exact bytes), verified
  resuming blob streams, tags, referrers. `ranged.RangedBlobBody`: a large blob as parallel
  ranges, fetched through the client's `blob_body`.
- `auth.RegistryAuth`: WWW-Authenticate, Basic, Bearer tokens per scope set, OAuth2; pure logic
  driven by the transport.
- `credentials`: `Credentials`, `parse_creds` (`--creds`), `find_credentials` (skopeo's files
  and credential helpers).
- `source.RegistrySource`: a registry image as an `ImageSource`.
- `push.RegistryPusher`: the push side (HEAD, cross-repository mounts, streamed uploads,
  manifests as exact bytes); `destination.RegistryDestination`: a repository as an
  `ImageDestination`.
"""
