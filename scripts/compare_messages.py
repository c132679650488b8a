#!/usr/bin/env python3
"""Whole-model, fragment and half-precision gossip against the centralized baseline, on one task and graph.

    python scripts/compare_messages.py --task gpt-char --out runs/messages     # ring8, fragments 4, bfloat16

Writes OUT/summary.md and plots; see p2ptrain/message_study.py and --help.
"""

import sys

from p2ptrain.message_study import main

if __name__ == "__main__":
    sys.exit(main())
