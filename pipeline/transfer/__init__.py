"""Moving bytes: verified streams, rate limiting, retry policy, progress."""
