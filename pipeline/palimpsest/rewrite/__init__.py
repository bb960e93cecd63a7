"""The streaming, resumable runner of LLM stages.

`runner` keeps an engine fed across a block of shards and commits each stage of each shard
under the commit protocol; `checkpoint` lets a killed worker resume within a shard. What each
stage sends and keeps lives with the stages (`palimpsest.stages`).
"""
