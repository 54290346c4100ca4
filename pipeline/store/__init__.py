"""Object stores: one ObjectStore interface, local / S3 / OSS backends, URL parsing."""
