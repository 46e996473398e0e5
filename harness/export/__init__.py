"""`harness export`: a results folder in lm-eval's results JSON and as Every Eval Ever records.

scores.py computes what is exported from the result rows; lm_eval_format.py and
every_eval_ever.py lay it out; cli.py reads the folder and writes the files.
"""
