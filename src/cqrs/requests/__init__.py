"""python-cqrs 4's ``cqrs.requests`` package, for the saga names it holds (`cqrs.requests.map.SagaMap`)."""
