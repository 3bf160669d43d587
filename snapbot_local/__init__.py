"""The offline stack: snapbot's stand-ins for Slack and for the provider.

`snapbot demo`, `snapbot shell` and `snapbot vps-sim` run the real app (or serve the
provider) against these instead of slack.com and the provider's API, and the test suite
and the benchmarks use the same code, so what the demo shows and what the tests prove
cannot drift. It is installed beside `bot/`, never imported by it: only the command
line loads it, inside those three subcommands (tests/contracts/test_contracts.py keeps it so).

    slack/       a loopback Slack Web API + response_url endpoint that records state
                 (FakeSlack), its Socket Mode WebSocket endpoint, Slack-exact request
                 signing, the Block Kit limits Slack enforces
    provider/    the provider's snapshot API (vps-api.md): state, HTTP, faults, seeding
    loopback.py  the one loopback HTTP server both serve on
    stack.py     LocalStack: the real app wired to both, on a temporary database
    transcript.py, demo.py, shell.py   what `snapbot demo` and `snapbot shell` show
"""
