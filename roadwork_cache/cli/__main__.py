"""`python -m roadwork_cache.cli` (what torchrun runs) is the `roadwork` command."""

from roadwork_cache.cli import main

main()
