"""blindspot's computation: data, models, attacks, analyses. No UI imports here.

Importing `engines` before torch is loaded bounds how long OpenMP worker threads spin between
parallel regions (GOMP_SPINCOUNT=3000, unless the user set it or OMP_WAIT_POLICY). The attack runs
many small kernels per iteration; with libgomp's default spinning, every region waits for a worker
that shares its core with another process, and a run beside one busy process took 62 s instead
of 5.8 s (n100-100-10, 300 images, 2 cores). OMP_WAIT_POLICY=PASSIVE removed that but cost up to
60 % on an idle machine (conv: 57 s vs 35 s); a short spin keeps most of the idle speed and holds
the loss under contention to about 2x (figures in the README, `benchmarks/bench_contention.sh`).
It only takes effect when torch (and so libgomp) is loaded after this import, as it is for the
`blindspot` command.
"""

import os as _os

if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "3000")
