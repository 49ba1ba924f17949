"""The README's promises: its Python example runs, its commands match CI."""

import re

from helpers import ROOT

README = (ROOT / "README.md").read_text()


def test_python_example_runs():
    (example,) = re.findall(r"```python\n(.*?)```", README, re.S)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    refinery, trainer = namespace["refinery"], namespace["trainer"]
    assert refinery.generation == 2
    # Generation 2 trained on refined labels at temperature 2, so they are soft.
    assert trainer.history.history["label_entropy"][-1] > 0.05


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    test_command = commands[1]
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command.replace("pip install -e", "pip install -q -e") in ci
