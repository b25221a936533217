"""Exceptions of the config package: every refusal carries the full list of problems."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, located as precisely as we can.

    `resource` is a label such as "Service demo/web", "Mesh default" or "document #2"
    (when the document has no usable kind and name); `field` is a dotted path such as
    "spec.ports[1].port". `line` is set only where the YAML parser knows it.
    """

    file: str
    resource: str
    field: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        # Empty parts (a store-level error has no resource) are left out rather than
        # printed as ": :", so every line stays readable.
        parts = (self.file, self.resource, self.field, self.message)
        return ": ".join(part for part in parts if part)


class ConfigError(Exception):
    """The configuration was refused; `problems` lists everything that is wrong."""

    def __init__(self, problems: Iterable[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("", "", "", problems)]
        self.problems: list[Problem] = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


class NotFound(ConfigError, KeyError):
    """A kind, resource or stored version that does not exist."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return ConfigError.__str__(self)
