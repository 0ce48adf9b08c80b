"""The commands of the ``oaipipe`` command line, one module per command or command group.

Each command is a module-level function with its click decoration; it parses, calls a library function,
prints, and returns an :class:`~oaipipe.errors.ExitCode`. The built-in plugin modules
``oaipipe/builtin/commands_*.py`` only add them to the group (``register_commands``), the hook that
third-party plugins use too.

======================  ===================================================================