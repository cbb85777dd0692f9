"""The `xray` command: parser, subcommands, predict and adapt on image files."""
