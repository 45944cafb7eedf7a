"""One notion of identity for configs: which fields decide what is computed, which only how.

A config that derives from `IdentityConfig` sorts every field into one of two sets:
- identity: changing it changes the result (the weights, the training trajectory), so a
  checkpoint, cache or cached task made under another value is another thing;
- operational: changing it changes how the work is run, watched or saved (cadences, paths,
  memory/speed trade-offs that are numerically the same computation), never the result.

Every place that asks "is this the same model / the same run" (resume preflight, cache loading,
the flows' cache keys) compares `identity()`, so adding a field means adding it to one set;
`classification_errors()` names any field in neither (a test fails on it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from .dotted import flatten_dotted
from .validation import ConfigModel


class IdentityConfig(ConfigModel):
    """Base of configs that declare `IDENTITY_FIELDS` and `OPERATIONAL_FIELDS` (a
    `ConfigModel`: frozen, no unknown keys, finite floats)."""

    IDENTITY_FIELDS: ClassVar[frozenset[str]] = frozenset()
    OPERATIONAL_FIELDS: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def classification_errors(cls) -> list[str]:
        """Fields in neither set, in both, or named by a set but not a field (empty: sound)."""
        fields = set(cls.model_fields)
        identity, operational = cls.IDENTITY_FIELDS, cls.OPERATIONAL_FIELDS
        problems = {
            "in neither IDENTITY_FIELDS nor OPERATIONAL_FIELDS": fields - identity - operational,
            "in both IDENTITY_FIELDS and OPERATIONAL_FIELDS": identity & operational,
            "named in a set but not a field": (identity | operational) - fields,
        }
        return [
            f"{cls.__name__}: {', '.join(sorted(names))} {why}"
            for why, names in problems.items()
            if names
        ]

    def identity(self) -> dict[str, Any]:
        """The identity fields as JSON-able data; a nested `IdentityConfig` contributes only
        its own identity."""
        data = self.model_dump(mode="json", include=set(self.IDENTITY_FIELDS))
        for name in self.IDENTITY_FIELDS:
            value = getattr(self, name)
            if isinstance(value, IdentityConfig):
                data[name] = value.identity()
        return dict(sorted(data.items()))

    def identity_differences(
        self, other: IdentityConfig | Mapping[str, Any]
    ) -> dict[str, tuple[Any, Any]]:
        """Identity fields where `other` differs: dotted name -> (this value, other value).
        `other` may be a dumped config (as saved beside a checkpoint or a cache); it is validated
        as this class first, so fields it lacks take their defaults."""
        if not isinstance(other, IdentityConfig):
            other = type(self).model_validate(dict(other))
        mine, theirs = flatten_dotted(self.identity()), flatten_dotted(other.identity())
        return {
            name: (mine.get(name), theirs.get(name))
            for name in sorted(set(mine) | set(theirs))
            if mine.get(name) != theirs.get(name)
        }
