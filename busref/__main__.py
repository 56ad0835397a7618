from __future__ import annotations

from busref.cli import main

raise SystemExit(main())
