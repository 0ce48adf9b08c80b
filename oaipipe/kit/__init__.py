"""The plugin kit: the public helpers every real plugin needs (see docs/plugins.md, "The plugin kit")."""
