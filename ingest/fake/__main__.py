"""`python -m ingest.fake`: the same as `ingest fake-server`."""

import sys

from ingest.fake.cli import main

sys.exit(main())
