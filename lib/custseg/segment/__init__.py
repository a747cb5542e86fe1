"""Segment: the features scaled and reduced, clustered for a sweep of k, k chosen with
guard rails, segments numbered, every customer labelled, and the labels' history kept."""
