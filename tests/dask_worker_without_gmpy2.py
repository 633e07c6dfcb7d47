"""A `dask worker --preload` script: the worker cannot import gmpy2, like a plain worker on a
host where it was never installed (tests/test_dask.py)."""
import sys

sys.modules["gmpy2"] = None  # import gmpy2 now raises ImportError
