"""The one exception type for bad configuration. Imports nothing from the project.

Every message names the offending field by its full dotted path (as written in a Hydra override) and says what to change.
"""


class ConfigError(ValueError):
    """A configuration problem. `problems` holds one line per offending field; str(err) lists them all."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            text = f"invalid config: {self.problems[0]}"
        else:
            text = "invalid config (%d problems):\n  - " % len(self.problems) + "\n  - ".join(self.problems)
        super().__init__(text)
