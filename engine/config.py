"""An engine process's settings: built by the command line, passed by ``engine start`` to the
detached ``engine serve`` as options, and read by the server. Light: no torch here."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    address: str
    checkpoint: str | None = None  # None: the weight-free guided refiner
    device: str = "auto"
    memory_budget_gb: float = 4.0  # temporal state of all streams together
    stream_idle_s: float = 900.0  # a stream unused this long is evicted
    exit_when_idle_s: float = 0.0  # stop after this long with no work (0: never); see --exit-when-idle
    half: bool = False
    allow_remote: bool = False  # a tcp address other machines can reach was asked for on purpose
    allow_files_under: tuple[str, ...] = ()  # the file transport reads only under these folders (empty: any)

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_gb * 2**30)

    def serve_options(self) -> list[str]:
        """``sparsemat engine serve`` options that give a process this config."""
        options = ["--address", self.address, "--device", self.device, "--memory-budget", repr(self.memory_budget_gb),
                   "--stream-idle-timeout", repr(self.stream_idle_s)]
        if self.checkpoint:
            options += ["--checkpoint", self.checkpoint]
        if self.half:
            options.append("--float16-network")
        if self.exit_when_idle_s:
            options += ["--exit-when-idle", repr(self.exit_when_idle_s)]
        if self.allow_remote:
            options.append("--allow-remote")
        for folder in self.allow_files_under:
            options += ["--allow-files-under", folder]
        return options
