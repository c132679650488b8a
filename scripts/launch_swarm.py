#!/usr/bin/env python3
"""Start a local p2ptrain swarm: one peer process per peer of a topology file.

    python scripts/launch_swarm.py                          # ring of 8 peers, digits, gossip
    python scripts/launch_swarm.py topologies/complete8.toml --partition dirichlet:0.3 --out runs/c8

See python scripts/launch_swarm.py --help for every option.
"""

import sys

from p2ptrain.swarm import main

if __name__ == "__main__":
    sys.exit(main())
