"""`python -m fastlstm`: the same as the `fastlstm` command."""

from fastlstm.cli import main

raise SystemExit(main())
