"""blindspot's computation: data, models, attacks, analyses. No UI imports here.

Importing `engines` (before torch is loaded) sets OpenMP's wait policy to PASSIVE unless the user
chose one: the attack runs many small kernels per iteration, and with the default spinning policy
each worker thread burns its core waiting between them; on a machine where another process also
wants the CPU, the spinning threads and the other process fight for the cores and a run slows
10-150x instead of the 2x that sharing two cores should cost (issue 12, measured in the README).
Sleeping workers cost a few percent on an idle machine. It only takes effect when torch (and so
libgomp) is loaded after this import, as it is for the `blindspot` command.
"""

import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
