"""Command-line front ends: argument parsing only, each calling one package function.

`scripts/*.py` and the console commands installed by setup.py both call the
`main(argv=None)` of these modules.
"""
