"""The ``d2v`` command line (typer). It parses, resolves configs and hands off to d2v_core."""
