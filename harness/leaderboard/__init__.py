"""Leaderboard: tables and figures from a results folder (`harness leaderboard`).

load.py reads the parts, conflicts.py keeps one setting per cell, tables.py aggregates,
figures.py draws, build.py puts them together with the settings of options.py, render.py
writes Markdown, CSV and HTML, cli.py is the command; columns.py names every column read.
"""
