"""One module per ``splitpoint`` subcommand, each exposing a click command named ``command``."""
