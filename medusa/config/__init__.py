"""Settings: the params schema (every setting declared once, with its default), paths, presets."""
