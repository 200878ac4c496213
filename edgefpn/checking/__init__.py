"""The parts of the `check` stage (``edgefpn.pipeline.check``) that are not the pass over the val split:
each engine's report entry (mAP deltas, per-level tensor agreement), its latency, and the gates."""
