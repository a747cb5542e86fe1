"""Insights: what each segment is (profiles against the population), what to call it
(names and descriptions), and the report a marketer reads."""
