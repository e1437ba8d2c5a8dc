"""Peer methods, run on the same model and items as DragNeXt (config key `method`)."""
