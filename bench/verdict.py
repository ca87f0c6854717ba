"""A target's verdict as the report writes it, for every group of the benchmark."""


def verdict(value, target, better_low):
    """`**met**`, or by how much `value` misses `target` (a miss under 1% is not "0% over")."""
    ok = value <= target if better_low else value >= target
    if ok:
        return "**met**"
    off = abs((value / target - 1) * 100 if better_low else (1 - value / target) * 100)
    off = f"{off:.1f}" if off < 1 else f"{off:.0f}"
    return f"**not met**: {off}% {'over' if better_low else 'short'}"
