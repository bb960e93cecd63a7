"""LLM rewrite stages (SGCR, SCOR, math, instruct) and the streaming, resumable runner.

`stages` decides what is sent and what is kept of each answer; `runner` keeps an engine fed
across a block of shards and commits each stage of each shard under the commit protocol;
`checkpoint` lets a killed worker resume within a shard; `job` ties a recipe to stage ids,
inputs and an engine for the CLI and the worker.
"""
