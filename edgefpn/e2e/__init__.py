"""The in-graph engine contract: uint8 image head and decode + NMS tail (graph.py), grafted onto built
engines (graft.py)."""
