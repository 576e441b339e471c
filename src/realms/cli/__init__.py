"""The ``realms`` command line: parses arguments, calls :mod:`realms.api`, prints the result.

Nothing here decides anything about the store. The modules:

- :mod:`~realms.cli.table`: every command, declared once (words, help, arguments, root, handler);
- :mod:`~realms.cli.parser`: the argparse parser made from the table;
- :mod:`~realms.cli.entry`: ``main``: parse, check root, run the handler, print errors;
  ``run``, the program: ``main``, then a quick exit;
- :mod:`~realms.cli.call`: the typed arguments and the store a handler gets;
- ``*_handlers``: one function per command: arguments -> one API function -> a printer;
- :mod:`~realms.cli.output`: printers of the API's typed results (tables, fields, JSON);
- :mod:`~realms.cli.generate`: the README's command table, bash and zsh completion and the man
  page, written from the table (``python -m realms.cli.generate [--check]``).
"""

from realms.cli.entry import main, run

__all__ = ["main", "run"]
