"""The commands of the ``oaipipe`` command line, one module per command or command group.

Each command is a module-level function with its click decoration; it parses, calls a library function,
prints, and returns an :class:`~oaipipe.errors.ExitCode`. The built-in plugin modules
``oaipipe/builtin/commands_*.py`` only add them to the group (``register_commands``), the hook that
third-party plugins use too.

======================  ==========================================================================
module                  commands
======================  ==========================================================================
``run``                 ``oaipipe run``
``validate``            ``oaipipe validate``
``schema``              ``oaipipe schema``
``plugins``             ``oaipipe plugins``
``models``              ``oaipipe models``
``ask``                 ``oaipipe ask``
``describe``            ``oaipipe describe``
``assistants``          ``oaipipe assistants``, ``assistants show``
``serve``               ``oaipipe serve``
``dataset``             ``oaipipe dataset build``, ``dataset validate``
``train``               ``oaipipe train``
``jobs``                ``oaipipe jobs list|show|wait|cancel``
``runs``                ``oaipipe runs``, ``runs show``
``logs``                ``oaipipe logs``
``report``              ``oaipipe report``
``sentiment``           ``oaipipe sentiment score``, ``sentiment eval``
``cache``               ``oaipipe cache stats``, ``cache clear``
``common``              what several commands share: options, ``-v``/``-q``, JSON output
======================  ==========================================================================

``-v/--verbose`` and ``-q/--quiet`` are not declared by the commands: the ``oaipipe`` group adds them to
every command, plugin commands included (:func:`~oaipipe.commands.common.add_verbosity_options`); a
command reads them with :func:`~oaipipe.commands.common.verbosity`.
"""
