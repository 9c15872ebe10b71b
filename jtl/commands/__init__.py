"""Entry points: the `jtl` command line (`cli.main`, the console script) and quickstart."""
