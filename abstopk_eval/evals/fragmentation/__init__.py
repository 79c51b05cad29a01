"""Fragmentation: decoder atoms that split one axis into two (nearly antiparallel) atoms."""
