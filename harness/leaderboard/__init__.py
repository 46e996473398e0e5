"""Leaderboard: tables and figures from a results folder (`harness leaderboard`).

load.py reads the parts, identities.py keeps one model per checkpoint, conflicts.py keeps one
setting per cell, tables.py aggregates, figures.py draws, build.py puts them together with the
settings of options.py; render.py formats cells and writes Markdown and CSV, page.py the HTML
page, write.py writes them all; cli.py is the command; columns.py names every column read.
"""
