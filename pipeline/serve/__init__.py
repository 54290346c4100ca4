"""`bale serve`: push events in, archived images out; a catalog and a read-only registry API."""
