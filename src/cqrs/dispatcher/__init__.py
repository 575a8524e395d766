"""python-cqrs's dispatcher package: its exceptions (`cqrs.dispatcher.exceptions`)."""
