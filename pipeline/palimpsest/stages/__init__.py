"""The stages a job can run: their registry (`registry`) and each stage's own code."""
