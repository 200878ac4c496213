"""What the stages write for people to read: renderers only, no stage logic.

``check_md`` (report.md, plus the machine and compute figures report.json records), ``check_html``
(report.html, self-contained), ``check_plots`` (its plots), ``gallery`` (its disagreement thumbnails)
and ``benchmark_md`` (benchmark.md). The stages in :mod:`edgefpn.pipeline` compute the figures and call these.
"""
