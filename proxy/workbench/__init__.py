"""The policy workbench: score policies on golden sets and lint them against the guide.

`cases` loads golden sets, `metrics` scores them (pure), `runner` classifies with the
gateway's SafeguardClient under bounded concurrency, `report` renders text and JSON,
`lint` checks policy structure, and `cli.register(subparsers)` wires `policy test` and
`policy lint` into the gateway's command line.
"""
