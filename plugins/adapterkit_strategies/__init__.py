"""The built-in strategies, registered through the same hook a third-party plugin uses."""
