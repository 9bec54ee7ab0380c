"""The version of lt_utils (recorded in run folders written by the CLI)."""
__version__ = "0.1.0"
