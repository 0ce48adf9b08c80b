"""The command line's commands, one module-level function per command (tox's ``session/cmd/`` is the
model). Built-in plugins (``oaipipe/builtin/commands_*.py``) add them to the ``oaipipe`` group through the
``register_commands`` hook; each command parses, calls a library function, and prints."""
