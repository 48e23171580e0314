"""``python -m service.cli``: the ``engram`` command."""

from service.cli.main import main

raise SystemExit(main())
