"""The Dockerfile read as instructions, for the checks that compare it with the deployment."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction with its continuation lines joined."""

    keyword: str
    value: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD, ENTRYPOINT or HEALTHCHECK, else None."""
        text = self.value
        while text.startswith("--"):
            text = text.split(None, 1)[1]
        if self.keyword == "HEALTHCHECK":
            text = text.removeprefix("CMD").strip()
        if not text.startswith("["):
            return None
        return [str(part) for part in json.loads(text)]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order; comments, blank lines and parser directives are dropped."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker skips comment lines inside a continued instruction too.
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        keyword, _, value = " ".join(pending).partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
        pending = []
    if pending:
        raise ValueError("the Dockerfile ends inside a continued instruction")
    return instructions


def stages(instructions: list[Instruction]) -> dict[str, list[Instruction]]:
    """Each stage's instructions by stage name, those of the stage it is built FROM first."""
    built: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for instruction in instructions:
        if instruction.keyword == "FROM":
            parts = instruction.value.split()
            image = parts[0]
            name = parts[2] if len(parts) == 3 and parts[1].lower() == "as" else ""
            current = [*built.get(image, []), instruction]
            built[name or f"stage-{len(built)}"] = current
        elif current is None:
            raise ValueError(f"line {instruction.line}: {instruction.keyword} before any FROM")
        else:
            current.append(instruction)
    return built


def external_bases(instructions: list[Instruction]) -> list[Instruction]:
    """The FROM instructions that name an image rather than an earlier stage."""
    names: set[str] = set()
    found = []
    for instruction in instructions:
        if instruction.keyword != "FROM":
            continue
        parts = instruction.value.split()
        if parts[0] not in names:
            found.append(instruction)
        if len(parts) == 3 and parts[1].lower() == "as":
            names.add(parts[2])
    return found


def read_all(path: Path = DOCKERFILE) -> list[Instruction]:
    """Every instruction of the repository's Dockerfile, all stages, in order."""
    return parse_dockerfile(path.read_text())


def read_dockerfile(path: Path = DOCKERFILE, target: str | None = None) -> list[Instruction]:
    """The instructions that build ``target`` (default: the last stage, what `docker build` builds)."""
    built = stages(read_all(path))
    return built[target] if target is not None else list(built.values())[-1]


def image_env(instructions: list[Instruction]) -> dict[str, str]:
    """Variables the ENV instructions set (KEY=VALUE form), the last one winning."""
    values: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for pair in instruction.value.split():
                key, _, value = pair.partition("=")
                values[key] = value
    return values


def install_steps(instructions: list[Instruction]) -> list[str]:
    """The docker/install.sh steps the RUN instructions run, in order."""
    return [step for instruction in instructions if instruction.keyword == "RUN"
            for step in re.findall(r"docker/install\.sh\s+(\w+)", instruction.value)]


def copy_sources(instructions: list[Instruction]) -> list[tuple[str, str]]:
    """(source, destination) of every COPY from the build context, in order."""
    pairs: list[tuple[str, str]] = []
    for instruction in instructions:
        if instruction.keyword != "COPY" or "--from" in instruction.value:
            continue
        *sources, destination = instruction.value.split()
        pairs.extend((source, destination) for source in sources if not source.startswith("--"))
    return pairs
