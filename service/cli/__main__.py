"""``python -m service.cli.main``: the ``engram`` command."""

from service.cli.main import main

raise SystemExit(main())
