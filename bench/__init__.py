"""Benchmarks of bale against skopeo and against the limits of the machine (issue 8).

`python -m bench` runs them (see `bench/__main__.py`); BENCHMARKS.md has the results.
"""
