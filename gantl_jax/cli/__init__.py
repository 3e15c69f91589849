"""Command-line modes and tools: generate, blend, export, compare, evaluate, bench and the weight importer."""
