"""`python -m pysidecar` is the `pysidecar` command."""

from pysidecar.cli import main

raise SystemExit(main())
