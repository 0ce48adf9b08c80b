"""The commands of the ``oaipipe`` command line, one module per command or command group.

Each command is a module-level click function: it parses its arguments, calls a library function (which
has no click in it), and prints. The built-in plugin modules ``oaipipe/builtin/commands_*.py`` only add
them to the group in their ``register_commands`` hook, the hook third-party plugins use too.
"""
