"""The archive format: content-addressed registry layout, per-image tars, records."""
