"""Fixtures live in tests/bed/ (one module per kind of server); this only registers them."""

pytest_plugins = [
    "tests.bed.fixtures_registry",
    "tests.bed.fixtures_store",
]
