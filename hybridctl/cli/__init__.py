"""The command line: stdlib argparse, lazy imports, one place that turns errors into exit codes."""
