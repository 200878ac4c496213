"""What `edgefpn benchmark` (the stage in ``edgefpn.pipeline.benchmark``) times with: timed calls and the
batch sweep, and the driver and cross-check of OpenVINO's ``benchmark_app``."""
