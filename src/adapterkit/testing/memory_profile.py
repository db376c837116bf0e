"""The peak of live CPU tensor memory while a function runs, from torch.profiler's memory timeline.

For tests and benchmarks that compare `adapterkit plan` with what really happens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable


def profiled_tensor_peak(
    run: Callable[[], object], *, preexisting: bool = False, from_first_gradient: bool = False
) -> tuple[int, Counter[str]]:
    """Run `run` under torch.profiler and return the peak bytes of live CPU tensor storages, with
    the bytes alive at that peak by the profiler's category (PARAMETER, ACTIVATION, ...).

    `preexisting`: count storages that existed before `run` (parameters) too. `from_first_gradient`:
    look for the peak only once a gradient exists (skips a model load inside `run`). Uses the
    profiler's memory timeline, a private torch API: for tests and benchmarks only.
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action, MemoryProfile

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        run()
    assert prof.profiler is not None and prof.profiler.kineto_results is not None
    mp = MemoryProfile(prof.profiler.kineto_results)
    starts = (Action.CREATE, Action.INCREMENT_VERSION) + (
        (Action.PREEXISTING,) if preexisting else ()
    )
    live: dict = {}
    cur = peak = 0
    at_peak: dict = {}
    counting = not from_first_gradient
    for _, action, (key, version), size in mp.timeline:
        if key.device.type != "cpu":
            continue
        if action in starts:
            cur += size - live.get(key, (0, ""))[0]
            category = mp._categories.get(key, version)
            live[key] = (size, category.name if category is not None else "UNKNOWN")
            counting = counting or live[key][1] == "GRADIENT"
        elif action == Action.DESTROY and key in live:
            cur -= live.pop(key)[0]
        if counting and cur > peak:
            peak, at_peak = cur, dict(live)
    groups: Counter[str] = Counter()
    for size, label in at_peak.values():
        groups[label] += size
    return peak, groups
