"""Metrics: likelihood accounting (bits/dim) and sample quality (FID/KID/precision-recall)."""
