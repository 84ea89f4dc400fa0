"""Evaluation (the ALPHA protocol): composites over the 9 canonical backgrounds, pixel, alpha and
network metrics, reference-compatible and clean protocols, aggregation and reports."""
