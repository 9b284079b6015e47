"""The token ledger's domain: scopes, filters, token values, aggregates and the use cases.

Pure Python plus the eventsourcing library: nothing here knows about HTTP or SQL.
"""
