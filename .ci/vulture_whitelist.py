"""Names vulture reports as unused that are used where it cannot see (read by `vulture` with the code; never run).

Framework hooks that go by name (Textual's compose/on_*/action_*/watch_*, CSS and BINDINGS; pytest's hooks and
markers) are ignored by pattern in pyproject's [tool.vulture]; fixtures and Typer commands by their decorators.
What is left is listed here, each with the reason it is used.
"""

# ruff: noqa: F821, B018
# fmt: off

# result fields written to JSON through dataclasses.asdict / to_json, read by other programs and the reports
_.mean_c  # engines/attack/results.py AttackResult
_.n_success
_.median_distortion
_.mean_l2
_.mean_linf
_.evaluations_per_image
_.forward_evaluations_per_image
_.output_shape  # engines/bounds/results.py LayerBound
_.with_both  # engines/certify/results.py
_.exact_gap_max
_.attacked_range  # engines/robustness/operation.py RobustnessRow

# set on a function object for Typer, which reads a command's signature and annotations (blindspot/options.py)
_.__signature__
_.__annotations__

# textual-image internals the workbench overrides (screens/graphics.py): a cache it reads, and the parameters of
# the method it replaces, called by keyword
_._result
sixel_options
background

# Textual: a message's `control` property names the widget it came from (screens/image_grid.py)
_.control

# benchmarks/gpu_check.py: the part named on its command line, called with getattr(check, part)
_.part1
_.part2

# public Python API the README documents for users (training protocol: two recipes compared over seeds)
compare_paired

# test oracles: kept beside the code they check so that both change together
aliased_symbol_matrices  # engines/bounds/conv.py: the paper's A(ω), whose √(s_h·s_w) excess tests/test_bounds.py shows
declaration_of  # blindspot/options.py: which request field each cli_option came from, for the option-parity test
_.live_ticks  # screens/attack.py: ticks of a followed run, how tests/tui/test_runs_screen.py tells it from a replay
