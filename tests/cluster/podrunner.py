"""Run one pod's containers as local processes and report its status like a kubelet.

Job semantics (completion, podFailurePolicy, backoffLimitPerIndex, disruption handling) are
decided by the real Job controller from what a kubelet reports, so this module reports
faithfully: Running once the containers start; Succeeded or Failed with each container's
exit code and termination message when they end; and on a graceful deletion it sends
SIGTERM, waits out the grace period, sends SIGKILL, reports the terminal phase, and only
then deletes the pod for good (as a kubelet does), so controllers see how it ended.

Containers run in their own process group with the image's environment (see images.py),
the resolved env (podenv.py) and volumes (volumes.py), with the repository root as working
directory. Not supported: probes (containers are ready once started), lifecycle hooks,
sidecar init containers, resource limits (nothing is enforced), exec and port-forward.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.client import CoreV1Api, V1Container, V1DeleteOptions, V1Pod, V1Preconditions
from kubernetes.client.exceptions import ApiException

from tests.cluster import images, processes
from tests.cluster.podenv import (
    POD_IP,
    ConfigError,
    ObjectSource,
    command_line,
    container_env,
    decode_secret_data,
)
from tests.cluster.volumes import (
    TOKEN_MOUNT,
    TokenSource,
    UnsupportedVolume,
    VolumeBuilder,
    container_mounts,
    rewriter,
)

log = logging.getLogger("kubelet.pods")

SMP = "application/strategic-merge-patch+json"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
MESSAGE_LIMIT = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class KubeletContext:
    """What every pod runner shares: API access, where things live, how to mint tokens."""

    core: CoreV1Api
    repo: Path
    pods_dir: Path
    objects: ObjectSource
    tokens: TokenSource
    environ: Mapping[str, str]


def pod_dir_name(pod: V1Pod) -> str:
    meta = pod.metadata
    return f"{meta.namespace}_{meta.name}_{meta.uid}"


@dataclass
class ContainerRun:
    """One container: its command, its current process, and how its runs ended."""

    spec: V1Container
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    message_path: Path
    pid_path: Path
    popen: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    restart_count: int = 0
    next_start: float | None = None
    terminated: dict[str, Any] | None = None
    last_terminated: dict[str, Any] | None = None
    waiting: tuple[str, str] = ("ContainerCreating", "")
    ever_started: bool = False
    _unreported_exit: bool = False

    @property
    def running(self) -> bool:
        return self.popen is not None and self.terminated is None

    @property
    def backing_off(self) -> bool:
        return self.next_start is not None

    def start(self) -> None:
        if self.ever_started:
            self.restart_count += 1
            if self.terminated is not None:
                self.last_terminated = self.terminated
        self.ever_started = True
        self.next_start = None
        self.terminated = None
        self.message_path.unlink(missing_ok=True)
        executable = self._executable()
        if executable is None:
            self._finish(128, "StartError", f"executable {self.argv[0]!r} not found in $PATH")
            return
        with open(self.log_path, "ab") as out:
            self.popen = subprocess.Popen(
                [executable, *self.argv[1:]],
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = now()
        with contextlib.suppress(RuntimeError):
            processes.write_pid_file(self.pid_path, self.spec.name, self.popen.pid)

    def _executable(self) -> str | None:
        name = self.argv[0]
        if "/" in name:
            return name if os.access(name, os.X_OK) else None
        return shutil.which(name, path=self.env.get("PATH", BASE_PATH))

    def poll(self) -> bool:
        """True once after the container ended (or failed to start); its status is recorded."""
        if self.running and self.popen is not None:
            code = self.popen.poll()
            if code is not None:
                exit_code = 128 - code if code < 0 else code
                reason = "Completed" if exit_code == 0 else "Error"
                self._finish(exit_code, reason, self._message(exit_code))
        reported, self._unreported_exit = self._unreported_exit, False
        return reported

    def back_off(self) -> float:
        """Schedule a restart after the crash-loop delay; returns the delay."""
        delay = min(10.0, 2.0 ** min(self.restart_count, 4))
        self.last_terminated, self.terminated, self.popen = self.terminated, None, None
        self.waiting = ("CrashLoopBackOff", f"back-off {delay:.0f}s restarting failed container")
        self.next_start = time.monotonic() + delay
        return delay

    def due(self) -> bool:
        return self.next_start is not None and time.monotonic() >= self.next_start

    def give_up_restart(self) -> None:
        """The pod is ending: a container waiting to restart keeps its last exit as final."""
        if self.next_start is not None:
            self.terminated, self.next_start = self.last_terminated, None

    def _finish(self, exit_code: int, reason: str, message: str) -> None:
        # As a runtime does when a container's main process ends: nothing of it survives.
        self.signal(signal.SIGKILL)
        self.pid_path.unlink(missing_ok=True)
        self._unreported_exit = True
        self.terminated = {
            "exitCode": exit_code,
            "reason": reason,
            "message": message,
            "startedAt": self.started_at or now(),
            "finishedAt": now(),
            "containerID": self.container_id,
        }

    @property
    def container_id(self) -> str:
        return f"local://{self.popen.pid}" if self.popen is not None else ""

    def signal(self, sig: signal.Signals) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def _message(self, exit_code: int) -> str:
        try:
            message = self.message_path.read_bytes()[:MESSAGE_LIMIT].decode(errors="replace")
        except OSError:
            message = ""
        if (
            message
            or exit_code == 0
            or self.spec.termination_message_policy != "FallbackToLogsOnError"
        ):
            return message
        return tail_of_log(self.log_path)

    def status(self, image_id: str) -> dict[str, Any]:
        if self.terminated is not None:
            state: dict[str, Any] = {"terminated": self.terminated}
        elif self.running:
            state = {"running": {"startedAt": self.started_at}}
        else:
            reason, message = self.waiting
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        status: dict[str, Any] = {
            "name": self.spec.name,
            "image": self.spec.image,
            "imageID": image_id,
            "containerID": self.container_id,
            "ready": self.running,
            "started": self.running,
            "restartCount": self.restart_count,
            "state": state,
        }
        if self.last_terminated is not None:
            status["lastState"] = {"terminated": self.last_terminated}
        return status


def tail_of_log(path: Path) -> str:
    try:
        lines = path.read_bytes().splitlines()[-FALLBACK_LOG_LINES:]
    except OSError:
        return ""
    return b"\n".join(lines)[-FALLBACK_LOG_BYTES:].decode(errors="replace")


@dataclass
class Conditions:
    """Pod conditions with transition times that change only when a status changes."""

    values: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    def set(self, kind: str, status: bool, reason: str = "") -> None:
        value = "True" if status else "False"
        current = self.values.get(kind)
        if current is None or current[0] != value or current[1] != reason:
            self.values[kind] = (value, reason, now())

    def render(self) -> list[dict[str, Any]]:
        out = []
        for kind, (status, reason, when) in self.values.items():
            item = {"type": kind, "status": status, "lastTransitionTime": when}
            if reason:
                item["reason"] = reason
            out.append(item)
        return out


class PodRunner(threading.Thread):
    """Owns one pod from binding until its final deletion."""

    POLL = 0.2

    def __init__(self, pod: V1Pod, ctx: KubeletContext) -> None:
        super().__init__(name=f"pod-{pod.metadata.namespace}/{pod.metadata.name}", daemon=True)
        self.pod = pod
        self.ctx = ctx
        self.dir = ctx.pods_dir / pod_dir_name(pod)
        self.uid: str = pod.metadata.uid
        self.conditions = Conditions()
        self.init_runs: list[ContainerRun] = []
        self.runs: list[ContainerRun] = []
        self.image_ids: dict[str, str] = {}
        self.start_time = now()
        self._lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._deadline: float | None = None
        self._deleted = False
        self.waiting_reason: tuple[str, str] = ("ContainerCreating", "")
        self.done = threading.Event()

    # -- called from the watch thread ------------------------------------------------------

    def request_stop(self, grace_seconds: int) -> None:
        """A graceful deletion: SIGTERM now, SIGKILL after `grace_seconds`."""
        with self._lock:
            deadline = time.monotonic() + max(grace_seconds, 0)
            if self._deadline is None:
                log.info("pod %s is being deleted; grace period %ss", self.pod_name, grace_seconds)
            if self._deadline is None or deadline < self._deadline:
                self._deadline = deadline
        self._stop_requested.set()

    def forget(self) -> None:
        """The pod is gone from the API (force deletion): kill at once, report nothing."""
        self._deleted = True
        self.request_stop(0)

    def kill_all(self) -> None:
        """Kubelet shutdown: stop every process of this pod now."""
        for run in self.init_runs + self.runs:
            run.signal(signal.SIGKILL)
            run.pid_path.unlink(missing_ok=True)

    # -- the pod's life -------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._live()
        except Exception:
            log.exception("pod %s failed in the test kubelet", self.pod_name)
            self.kill_all()
            self._report_terminal(message="internal error in the test kubelet; see its log")
        finally:
            self.done.set()

    @property
    def pod_name(self) -> str:
        return f"{self.pod.metadata.namespace}/{self.pod.metadata.name}"

    def _live(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        prepared = self._prepare_until_ready()
        if prepared and self._run_init_containers():
            self._run_containers()
        self._report_terminal()
        self._finalize_deletion()

    def _prepare_until_ready(self) -> bool:
        while not self._stop_requested.is_set():
            try:
                self._prepare()
                return True
            except UnsupportedVolume as error:
                self._report_terminal(message=str(error), reason="UnsupportedVolume")
                return False
            except ConfigError as error:
                # As a kubelet does: report why, and retry until the object appears.
                self.waiting_reason = ("CreateContainerConfigError", str(error))
                self._report("Pending")
                self._stop_requested.wait(2.0)
        return False

    def _prepare(self) -> None:
        spec = self.pod.spec
        objects = self.ctx.objects
        builder = VolumeBuilder(self.pod, self.dir, objects, self.ctx.tokens)
        volumes = builder.build_all()
        kubeconfig = builder.write_kubeconfig(self.dir / "kubeconfig")
        tmp = self.dir / "tmp"
        tmp.mkdir(exist_ok=True)
        self.init_runs = [
            self._container(c, volumes, kubeconfig, tmp) for c in spec.init_containers or []
        ]
        self.runs = [self._container(c, volumes, kubeconfig, tmp) for c in spec.containers]

    def _container(
        self,
        container: V1Container,
        volumes: Mapping[str, Path],
        kubeconfig: Path | None,
        tmp: Path,
    ) -> ContainerRun:
        image = images.resolve(container.image or "", self.ctx.repo, self.ctx.environ)
        self.image_ids[container.name] = f"local://{image.root}"
        base = {
            "PATH": f"{image.bin_dir}:{BASE_PATH}",
            "HOME": self.ctx.environ.get("HOME", "/root"),
            "HOSTNAME": self.pod.metadata.name,
            "LANG": "C.UTF-8",
            "TMPDIR": str(tmp),
            "VIRTUAL_ENV": str(image.root),
            **image.env,
        }
        env = container_env(self.pod, container, self.ctx.objects, base)
        message_path = self.dir / f"{container.name}.termination-log"
        mounts = container_mounts(container, volumes)
        mounts.append((container.termination_message_path or DEFAULT_TERMINATION_LOG, message_path))
        if kubeconfig is not None and not any(path == TOKEN_MOUNT for path, _ in mounts):
            kubeconfig = None  # the token volume exists but this container does not mount it
        rewrite = rewriter(mounts)
        # Only values the pod spec gave are container paths; the kubelet's own (PATH, HOME,
        # TMPDIR, the image's variables) are host paths and must not be rewritten.
        env = {
            key: value if base.get(key) == value else rewrite(value) for key, value in env.items()
        }
        if kubeconfig is not None:
            env.setdefault("KUBECONFIG", str(kubeconfig))
        argv = [rewrite(part) for part in command_line(container, env)]
        return ContainerRun(
            spec=container,
            argv=argv,
            env=env,
            cwd=self.ctx.repo,
            log_path=self.dir / "logs" / f"{container.name}.log",
            message_path=message_path,
            pid_path=self.dir / f"{container.name}.pid",
        )

    def _restart_wanted(self, run: ContainerRun) -> bool:
        policy = run.spec.restart_policy or self.pod.spec.restart_policy or "Always"
        exit_code = (run.terminated or {}).get("exitCode", 0)
        return policy == "Always" or (policy == "OnFailure" and exit_code != 0)

    def _run_init_containers(self) -> bool:
        """Init containers one after another; False when the pod must not go on."""
        for run in self.init_runs:
            while True:
                run.start()
                self._report("Pending")
                while not run.poll() and not self._stopping():
                    time.sleep(self.POLL)
                if self._stopping():
                    self._terminate([run])
                    return False
                if run.terminated and run.terminated["exitCode"] == 0:
                    break
                if self.pod.spec.restart_policy == "Never":
                    return False
                delay = run.back_off()
                self._report("Pending")
                if self._stop_requested.wait(delay):
                    run.give_up_restart()
                    return False
        return True

    def _stopping(self) -> bool:
        return self._stop_requested.is_set()

    def _run_containers(self) -> None:
        for run in self.runs:
            run.start()
        self._report("Running")
        while True:
            changed = False
            for run in self.runs:
                if run.poll():
                    changed = True
                    if not self._stopping() and self._restart_wanted(run):
                        run.back_off()
                elif run.due() and not self._stopping():
                    run.start()
                    changed = True
            if self._stopping():
                self._terminate(self.runs)
                return
            if not any(run.running or run.backing_off for run in self.runs):
                return
            if changed:
                self._report("Running")
            time.sleep(self.POLL)

    def _terminate(self, runs: list[ContainerRun]) -> None:
        """SIGTERM every running container, SIGKILL whatever outlives the grace period."""
        for run in runs:
            run.give_up_restart()
            if run.running:
                run.signal(signal.SIGTERM)
        while any(run.running for run in runs):
            with self._lock:
                deadline = self._deadline or 0.0
            if time.monotonic() >= deadline:
                for run in runs:
                    if run.running:
                        run.signal(signal.SIGKILL)
            for run in runs:
                run.poll()
            time.sleep(0.05)

    # -- reporting ------------------------------------------------------------------------

    def _phase(self) -> str:
        runs = self.runs
        if not runs or any(run.terminated is None for run in runs):
            failed_init = any(
                r.terminated and r.terminated["exitCode"] != 0 for r in self.init_runs
            )
            return "Failed" if failed_init or not runs or self._stopping() else "Running"
        return (
            "Succeeded"
            if all(run.terminated and run.terminated["exitCode"] == 0 for run in runs)
            else "Failed"
        )

    def _status(self, phase: str) -> dict[str, Any]:
        running = phase == "Running" and all(run.running for run in self.runs)
        initialized = all(r.terminated and r.terminated["exitCode"] == 0 for r in self.init_runs)
        terminal = phase in ("Succeeded", "Failed")
        completed_reason = "PodCompleted" if terminal else ("" if running else "ContainersNotReady")
        self.conditions.set("PodReadyToStartContainers", not terminal)
        self.conditions.set(
            "Initialized",
            initialized or terminal,
            "" if initialized else "ContainersNotInitialized",
        )
        self.conditions.set("ContainersReady", running, completed_reason)
        self.conditions.set("Ready", running, completed_reason)
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": POD_IP,
            "hostIPs": [{"ip": POD_IP}],
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": self.start_time,
            "conditions": self.conditions.render(),
            "containerStatuses": [self._container_status(run) for run in self.runs],
        }
        if self.init_runs:
            status["initContainerStatuses"] = [
                self._container_status(run) for run in self.init_runs
            ]
        return status

    def _container_status(self, run: ContainerRun) -> dict[str, Any]:
        return run.status(self.image_ids.get(run.spec.name, ""))

    def _report(self, phase: str, extra: Mapping[str, Any] | None = None) -> None:
        if self._deleted:
            return
        status = self._status(phase)
        if not self.runs:
            status["containerStatuses"] = [
                self._waiting_status(c) for c in self.pod.spec.containers
            ]
        status.update(extra or {})
        self._patch_status(status)

    def _waiting_status(self, container: V1Container) -> dict[str, Any]:
        reason, message = self.waiting_reason
        still_waiting = reason in ("ContainerCreating", "CreateContainerConfigError")
        state: dict[str, Any]
        if still_waiting and not self._stopping():
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        else:
            if still_waiting:
                reason = "ContainerStatusUnknown"
                message = "the pod was deleted before its containers started"
            terminated = {
                "exitCode": 137,
                "reason": reason,
                "message": message,
                "finishedAt": now(),
            }
            state = {"terminated": terminated}
        return {
            "name": container.name,
            "image": container.image,
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": 0,
            "state": state,
        }

    def _patch_status(self, status: Mapping[str, Any]) -> None:
        meta = self.pod.metadata
        try:
            self.ctx.core.patch_namespaced_pod_status(
                meta.name,
                meta.namespace,
                {"metadata": {"uid": self.uid}, "status": status},
                _content_type=SMP,
            )
        except ApiException as error:
            if error.status in (404, 409):
                self._deleted = True
                return
            log.warning("status update for %s failed: %s", self.pod_name, error.reason)

    def _report_terminal(self, message: str = "", reason: str = "") -> None:
        phase = self._phase()
        if phase not in ("Succeeded", "Failed"):
            phase = "Failed"
        extra: dict[str, Any] = {}
        if message:
            extra["message"] = message
        if reason:
            extra["reason"] = reason
        if message and not self.runs:
            self.waiting_reason = (reason or "Error", message)
        self._report(phase, extra)
        codes = [(run.terminated or {}).get("exitCode") for run in self.runs]
        log.info("pod %s %s (exit codes %s)", self.pod_name, phase, codes)

    def _finalize_deletion(self) -> None:
        if not self._stopping() or self._deleted:
            return
        meta = self.pod.metadata
        options = V1DeleteOptions(
            grace_period_seconds=0, preconditions=V1Preconditions(uid=self.uid)
        )
        try:
            self.ctx.core.delete_namespaced_pod(
                meta.name, meta.namespace, body=options, grace_period_seconds=0
            )
        except ApiException as error:
            if error.status not in (404, 409):
                log.warning("final delete of %s failed: %s", self.pod_name, error.reason)


def secret_reader(core: CoreV1Api) -> Callable[[str, str], Mapping[str, str] | None]:
    def read(namespace: str, name: str) -> Mapping[str, str] | None:
        try:
            secret = core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        data = decode_secret_data(secret.data)
        data.update(secret.string_data or {})
        return data

    return read


def config_map_reader(core: CoreV1Api) -> Callable[[str, str], Mapping[str, str] | None]:
    def read(namespace: str, name: str) -> Mapping[str, str] | None:
        try:
            config_map = core.read_namespaced_config_map(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(config_map.data or {})

    return read
