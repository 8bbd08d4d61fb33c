"""Values taken as typed: the values of the keys a command names as literal (paths, prompts) are quoted for Hydra,
so `prompt=宝玉道`, a path holding '=' or a prompt holding `${` needs no quoting of its own."""

import re


def quote_literal_values(args: list[str], keys: tuple[str, ...]) -> list[str]:
    """The arguments with the values of `keys` quoted for Hydra, so that they mean what was typed.

    A value already in quotes is left as it is, as is `[A,B]` (a list) whose unquoted items are quoted one
    by one: `prompt=[宝玉道,'Hello, world']`.
    """
    quoted = []
    for arg in args:
        key, equals, value = arg.partition("=")
        if equals and key in keys and value and not is_quoted(value):
            if value.startswith("[") and value.endswith("]"):
                items = [item.strip() for item in split_items(value[1:-1])]
                value = "[" + ",".join(item if is_quoted(item) else hydra_quote(item) for item in items if item) + "]"
            else:
                value = hydra_quote(value)
        quoted.append(f"{key}{equals}{value}")
    return quoted


def is_quoted(value: str) -> bool:
    return len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""


def hydra_quote(text: str) -> str:
    """`text` as a single-quoted Hydra value: quotes, interpolations (`${`) and the backslashes before them
    (or at the end) escaped, every other character as it is."""
    escaped = re.sub(r"(\\*)('|\$\{|$)", lambda m: m.group(1) * 2 + ("\\" + m.group(2) if m.group(2) else ""), text)
    return f"'{escaped}'"


def split_items(text: str) -> list[str]:
    """`text` split at the commas outside quotes."""
    items, current, quote = [], "", None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == ",":
            items.append(current)
            current = ""
            continue
        current += char
    return [*items, current]
