"""Tests of the engine-facing storage pieces (`cqrs.saga.storage`) beyond the contract suite."""
