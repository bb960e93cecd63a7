"""Thin CLI modules, one per `palimpsest` subcommand (see palimpsest.cli)."""
