"""``manage.py makemessages`` with this project's defaults (Django's documented way to customise it).

* never scanned: ``var/`` (data), ``tests/``, ``bench/``, ``docs/``, and the Django-free agent and
  CLI (``providers/agent/``, ``cli/``), which have no Django translation machinery;
* ``--no-obsolete``: strings removed from the code leave the catalogue;
* ``--add-location file`` unless told otherwise: file names without line numbers, so an edit
  elsewhere in a file does not rewrite every reference in the ``.po``.

``make messages`` runs this for zh_Hans and then ``compilemessages``; commit both the ``.po`` and
the ``.mo``. tests/core/test_translations.py fails while any string is missing or untranslated.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands import makemessages

PROJECT_IGNORE_PATTERNS = ["var/*", "tests/*", "bench/*", "docs/*", "cli/*", "providers/agent/*"]


class Command(makemessages.Command):
    def handle(self, *args: Any, **options: Any) -> None:
        options["ignore_patterns"] = [*options.get("ignore_patterns", []), *PROJECT_IGNORE_PATTERNS]
        options["no_obsolete"] = True
        if not options.get("add_location"):
            options["add_location"] = "file"
        super().handle(*args, **options)
