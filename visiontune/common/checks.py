"""Checks of user arguments shared by every layer, with errors in the Keras style."""

import numbers


def check_int(value, name, minimum=0, maximum=None, where=""):
    """Returns `value` if it is an integer in `[minimum, maximum]`, else raises `ValueError`.

    Booleans are refused although Python counts them as integers: `epochs=True`
    is a mistake, not 1. NumPy integers are accepted.

    Args:
        value: What the user gave.
        name: The argument's name, as the user wrote it (`"lora_rank"`).
        minimum, maximum: The allowed range; `maximum=None` for no upper bound.
        where: Appended to the name in the message, e.g. `" for efficientnetb0"`.

    Example:

    >>> check_int(9, "unfreeze_blocks", 0, 7, " for efficientnetb0")
    Traceback (most recent call last):
    ValueError: Expected `unfreeze_blocks` between 0 and 7 for efficientnetb0. Received: ...
    """
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and value >= minimum and (maximum is None or value <= maximum):
        return value
    wanted = (f"between {minimum} and {maximum}" if maximum is not None
              else f"to be an integer >= {minimum}")
    raise ValueError(f"Expected `{name}` {wanted}{where}. Received: {name}={value!r}.")


def normalize_size(size):
    """Returns `(height, width)` from an int or a pair."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)
