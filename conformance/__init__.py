"""The CRI conformance specs (run them with ``pytest conformance``; see conftest.py)."""
