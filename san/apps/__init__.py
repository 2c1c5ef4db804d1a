"""Everything that parses a command line (``san <command>``); the library takes option objects.

The command modules import the library inside their ``main`` functions, after the arguments are
parsed: ``san --help`` and usage errors answer before torch is imported.
"""
