"""`python -m jobmesh` is `python -m jobmesh.worker`."""

from .worker import main

main()
