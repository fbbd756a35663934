"""Small formatting helpers for messages shown to people."""


def size_label(size: int) -> str:
    """A byte count as people read it: 512 KB, 10 MB, 2 GB."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} B"
