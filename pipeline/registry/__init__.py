"""Registry HTTP API v2 client: auth, credentials, manifests, blobs, uploads.

- `client.RegistryClient`: one per registry; manifests (exact bytes), verified resuming blob
  streams, tags, referrers; retries and one-line errors.
- `auth.RegistryAuth`: WWW-Authenticate, Basic, Bearer tokens per scope set, OAuth2; pure logic
  driven by the client.
- `credentials`: `Credentials`, `parse_creds` (`--creds`), `find_credentials` (skopeo's files
  and credential helpers).
- `source.RegistrySource`: a registry image as an `ImageSource`.
- `push.RegistryPusher`: the push side (HEAD, cross-repository mounts, streamed uploads,
  manifests as exact bytes); `destination.RegistryDestination`: a repository as an
  `ImageDestination`.
"""
