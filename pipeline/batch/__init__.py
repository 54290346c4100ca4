"""Batch runs: spec files, scheduling, sharding, reports."""
