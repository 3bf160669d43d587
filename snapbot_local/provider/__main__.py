"""`python -m snapbot_local.provider`: serve the simulator (as `snapbot vps-sim` does)."""

from snapbot_local.provider import main

raise SystemExit(main())
