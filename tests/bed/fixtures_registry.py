"""Registry test bed fixtures (filled by the test-bed work)."""
