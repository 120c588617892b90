"""Two-stage DRL search (prune, then per-layer precision) driven by measured latency."""
