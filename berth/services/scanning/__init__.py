"""Image scanning: package inventories read from layers (`layers.py`)."""
