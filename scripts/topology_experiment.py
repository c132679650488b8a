#!/usr/bin/env python3
"""The same training on several communication graphs, compared: results.csv, summary.md and plots.

    python scripts/topology_experiment.py --topologies ring16,torus16,complete16 --algos gossip,admm \
        --partition iid,dirichlet:0.1 --seeds 0 --out runs/topologies

See python scripts/topology_experiment.py --help for every option.
"""

import sys

from p2ptrain.experiment import main

if __name__ == "__main__":
    sys.exit(main())
