"""Registry HTTP API v2 client: auth, credentials, manifests, blobs, uploads."""
