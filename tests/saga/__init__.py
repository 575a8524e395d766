"""Tests of the saga engine (`cqrs.saga`), one module per engine module."""
