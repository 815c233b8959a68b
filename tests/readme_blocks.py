"""The README's ```python blocks, for tests that run one and check what it computed."""

import pathlib
import re

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def readme_block(marker: str) -> str:
    """The first ```python block of README.md whose code contains ``marker``."""
    return next(b for b in BLOCKS if marker in b)
