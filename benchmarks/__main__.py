"""``python -m benchmarks``: run every benchmark and print each figure beside its goal."""

from benchmarks.run import main

raise SystemExit(main())
