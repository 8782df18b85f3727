"""Tally's HTTP API and command line: parse, call the engine, render."""
