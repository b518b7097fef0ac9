"""Built-in event sources (each one a plugin module, registered by name)."""
