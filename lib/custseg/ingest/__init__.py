"""Ingest: raw transaction sources and the customer table, read through their mappings,
validated, deduplicated and loaded into the lake, every row accounted for."""
