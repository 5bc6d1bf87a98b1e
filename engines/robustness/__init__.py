"""§4.2's robustness, measured: the attack's upper bound, a certified lower bound, transfer and noise."""
