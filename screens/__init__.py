"""Textual screens of the blindspot workbench; thin views over engines."""
