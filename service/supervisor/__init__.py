"""The per-node supervisor: claims jobs, runs each in a trainer child, records how it ended."""
