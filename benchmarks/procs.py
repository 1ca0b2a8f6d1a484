"""Starting, signalling and measuring :mod:`benchmarks.worker_proc` subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent


class ChildError(RuntimeError):
    """A worker subprocess misbehaved (exited early, failed, did not answer)."""


class WorkerProcess:
    """One ``python -m benchmarks.worker_proc`` child."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: IO[bytes], label: str) -> None:
        self.proc = proc
        self._stderr = stderr
        self.label = label
        self.exit_info: dict[str, int] = {}

    @classmethod
    async def start(
        cls,
        url: str,
        *,
        mode: str | None = "library",
        module: str = "benchmarks.worker_proc",
        env: Mapping[str, str] | None = None,
        **options: Any,
    ) -> WorkerProcess:
        """Start ``python -m MODULE URL [--mode MODE] --option value...``; wait for READY.

        ``env``: variables set (over this process's environment) for the child.
        """
        argv = [sys.executable, "-m", module, url]
        if mode is not None:
            argv += ["--mode", mode]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is not False and value is not None:
                argv += [flag, str(value)]
        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), child_env.get("PYTHONPATH")])
        )
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=ROOT,
            env=child_env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
        child = cls(proc, stderr, f"{module} ({mode or 'default'}) pid {proc.pid}")
        try:
            await child._expect("READY", within=60)
        except BaseException:
            await child.kill()
            raise
        return child

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return "\n".join(text.splitlines()[-20:])

    async def _expect(self, word: str, *, within: float) -> str:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        except TimeoutError:
            raise ChildError(f"{self.label}: no {word} within {within:g}s") from None
        text = line.decode().strip()
        if not text.startswith(word):
            await self.proc.wait()
            raise ChildError(
                f"{self.label}: expected {word}, got {text!r} (exit code "
                f"{self.proc.returncode}); stderr:\n{self.stderr_tail()}"
            )
        return text

    async def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"GO\n")
        await self.proc.stdin.drain()
        await self._expect("STARTED", within=30)

    def check_alive(self) -> None:
        if self.proc.returncode is not None:
            raise ChildError(
                f"{self.label} exited early with code {self.proc.returncode}; "
                f"stderr:\n{self.stderr_tail()}"
            )

    def memory_kb(self) -> dict[str, int]:
        """Peak (``VmHWM``) and current (``VmRSS``) resident size, read from /proc."""
        found: dict[str, int] = {}
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key in ("VmHWM", "VmRSS"):
                        found[key] = int(rest.split()[0])
        except OSError:
            import psutil  # type: ignore[import-untyped]

            found["VmRSS"] = psutil.Process(self.proc.pid).memory_info().rss // 1024
        return found

    async def stop(self, *, within: float = 60) -> dict[str, int]:
        """SIGTERM, then wait for the child's graceful exit; returns its EXIT figures."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            text = await self._expect("EXIT", within=within)
            await asyncio.wait_for(self.proc.wait(), within)
            if self.proc.returncode != 0:
                raise ChildError(
                    f"{self.label} exited with code {self.proc.returncode}; "
                    f"stderr:\n{self.stderr_tail()}"
                )
        finally:
            await self.kill()
        self.exit_info = {k: int(v) for k, v in (part.split("=") for part in text.split()[1:])}
        return self.exit_info

    async def kill(self) -> None:
        """Make sure the child is gone (SIGKILL if still running) and release its files."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if not self._stderr.closed:
            self._stderr.close()
