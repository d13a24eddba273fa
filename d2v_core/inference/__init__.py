"""Using what was learned: load a checkpoint, embed, probe, export, report."""
