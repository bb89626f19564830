"""The CRI emulator's state and collaborators, shared by every RPC handler.

Handlers (``sandboxes``, ``containers``, ``exec``, ``stats``, ``images_service``, ``info``) are
functions of a :class:`Runtime`; this module owns what they share: the stores, saving, starting and
ending simulated processes, and the event stream. Every change goes through ``save_*`` so the state
directory always reflects what the clients were told.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubeharness import __version__
from kubeharness.clock import Clock
from kubeharness.emulators.cri import rootfs
from kubeharness.emulators.cri.behaviour import HELPER, Behaviour, behaviour_for, command_line
from kubeharness.emulators.cri.config import CriConfig
from kubeharness.emulators.cri.events import EventHub
from kubeharness.emulators.cri.images import DEFAULT_CATALOG, Catalog, LocalImage, normalize_ref
from kubeharness.emulators.cri.imagestore import ImageStore
from kubeharness.emulators.cri.listeners import PortListeners
from kubeharness.emulators.cri.listing import ListIndex
from kubeharness.emulators.cri.logs import ContainerLog, encode_line
from kubeharness.emulators.cri.model import Container, Sandbox
from kubeharness.emulators.cri.netns import Namespaces
from kubeharness.emulators.cri.network import IpPool
from kubeharness.emulators.cri.podnet import PodNetwork
from kubeharness.emulators.cri.process import Exit, Process
from kubeharness.emulators.cri.scripted import ScriptedProcess
from kubeharness.emulators.cri.shell.interp import APPLET_NAMES, Machine
from kubeharness.emulators.cri.shell.vfs import Vfs, VfsError
from kubeharness.emulators.cri.store import NameIndex, Store
from kubeharness.emulators.cri.views import container_status, container_summary, sandbox_status, sandbox_summary
from kubeharness.errors import InvalidArgument
from kubeharness.persist import Journal
from kubeharness.wire.cri import api_pb2 as cri

log = logging.getLogger(__name__)


class Runtime:
    """Everything the RPC handlers share."""

    NODE_KIND = "node"  # journal kind of node-wide settings (the pod CIDR from UpdateRuntimeConfig)
    # journal kind of a sandbox whose network is being set up: written before the namespace and CNI ADD are
    # made, deleted once the sandbox is saved (or the setup undone); one left by a crash is undone at start
    SETUP_KIND = "sandbox-setup"

    def __init__(self, config: CriConfig, state_dir: Path, clock: Clock, min_tick_ns: int = 0) -> None:
        self.config = config
        self.clock = clock  # the only source of time
        self.state_dir = state_dir
        self.version = config.runtime_version or __version__
        self.sandboxes: Store[Sandbox] = Store("sandbox")
        self.containers: Store[Container] = Store("container")
        self.names = NameIndex()  # sandbox and container names -> holder ids
        self.by_sandbox: dict[str, dict[str, Container]] = {}  # sandbox id -> its containers
        self.sandbox_list: ListIndex[Sandbox] = ListIndex(sandbox_summary)  # encoded ListPodSandbox entries
        self.container_list: ListIndex[Container] = ListIndex(container_summary)  # encoded ListContainers entries
        self.catalog = Catalog(list(config.images) + DEFAULT_CATALOG)  # the virtual registry
        self.journal = Journal(state_dir / "state.journal", config.journal_compact_lines)  # every change, appended
        self._saved = self.journal.load()  # what the last run left, until load() takes it
        self.images = ImageStore(self.journal, self._saved.get(ImageStore.KIND, {}).values())  # images on the node
        self.ips = IpPool(config.pod_cidr)  # pod addresses
        self.runtime_config = cri.RuntimeConfig()  # last UpdateRuntimeConfig
        for record in self._saved.get(self.NODE_KIND, {}).values():  # a pod CIDR the kubelet handed over earlier
            self.runtime_config.network_config.pod_cidr = record["pod_cidr"]
            self.ips = IpPool(self._first_cidr(record["pod_cidr"]))
        self.events = EventHub(config.event_buffer)  # GetContainerEvents subscribers
        self.netns = Namespaces(config.netns)  # sandboxes' network namespaces, emulated or real
        # CNI plugins that set up pod networks, when a configuration directory is given (else the pool)
        self.cni = PodNetwork(Path(config.cni_conf_dir), config.cni_bin_dir, state_dir / "cni",
                              with_loopback=self.netns.real) if config.cni_conf_dir else None
        self.listeners = PortListeners(clock, config.serve_ports)  # containers' HTTP/TCP/gRPC ports on loopback IPs
        self.network_locks: dict[str, asyncio.Lock] = {}  # one network teardown at a time, by sandbox id
        self.processes: dict[str, Process] = {}  # running containers' simulated processes
        self.pulls: dict[str, asyncio.Task[str]] = {}  # pulls in flight by canonical ref
        self.image_fs_dir = state_dir / "snapshots"  # where the image filesystem "lives"
        self.image_fs_dir.mkdir(parents=True, exist_ok=True)
        self._exit_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.filesystems: dict[str, Vfs] = {}  # scripted containers' filesystems by container id
        self._exec_pids: dict[str, int] = {}  # the last PID given to an exec, by container id
        # records of sandboxes whose network setup is in flight or left by a crash (as begin_setup saw them)
        self.setups: dict[str, dict[str, Any]] = {}
        self._min_tick_ns = min_tick_ns
        self._preload()

    def _preload(self) -> None:
        """Put the pause image and any configured images on the node without a pull, as an installer would."""
        pause = normalize_ref(self.config.pause_image)
        for ref in {pause, *(normalize_ref(r) for r in self.config.preloaded_images)}:
            entry = self.catalog.lookup(ref)
            if entry is None or entry.missing:
                raise InvalidArgument(f"preloaded image {ref!r} is not in the image catalog")
            if self.images.resolve(ref) is None:
                self.images.add(LocalImage.from_catalog(entry, ref, pinned=False))  # containerd 1.6 pins nothing

    # -- ids and persistence ----------------------------------------------------------------------

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(32)

    def save_sandbox(self, sb: Sandbox) -> None:
        self.journal.put("sandbox", sb.id, sb.to_record())
        self.sandbox_list.update(sb.id, sb)
        self._maybe_compact()

    def save_container(self, c: Container) -> None:
        self.journal.put("container", c.id, c.to_record())
        self.container_list.update(c.id, c)
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        if self.journal.wants_compaction(len(self.sandboxes) + len(self.containers) + len(self.images)):
            self.journal.compact(self._live_records())

    def _live_records(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for sb in self.sandboxes:
            yield "sandbox", sb.id, sb.to_record()
        for c in self.containers:
            yield "container", c.id, c.to_record()
        for image in self.images:
            yield ImageStore.KIND, image.id, image.to_record()
        for key, record in self.setups.items():
            yield self.SETUP_KIND, key, record
        if self.runtime_config.network_config.pod_cidr:
            yield self.NODE_KIND, "pod_cidr", {"pod_cidr": self.runtime_config.network_config.pod_cidr}

    @staticmethod
    def _first_cidr(cidrs: str) -> str:
        return cidrs.split(",")[0].strip()

    def set_pod_cidr(self, cidrs: str) -> None:
        """Take new sandbox addresses from ``cidrs`` (the first range of a dual-stack list), and remember it."""
        pool = IpPool(self._first_cidr(cidrs))
        for sb in self.sandboxes:
            if sb.ready and sb.ip:
                pool.reserve(sb.ip)
        self.ips = pool
        self.runtime_config.network_config.pod_cidr = cidrs
        self.journal.put(self.NODE_KIND, "pod_cidr", {"pod_cidr": cidrs})

    def begin_setup(self, sb: Sandbox) -> None:
        """Record that ``sb``'s network is being set up (its namespace path, if any, already in it); the
        record is kept as it is now, whatever later happens to ``sb``, also through compactions."""
        self.setups[sb.id] = record = sb.to_record()
        self.journal.put(self.SETUP_KIND, sb.id, record)

    def end_setup(self, sb: Sandbox) -> None:
        """The setup is over: the sandbox is saved, or what was set up is undone."""
        if self.setups.pop(sb.id, None) is not None:
            self.journal.delete(self.SETUP_KIND, sb.id)

    def add_sandbox(self, sb: Sandbox) -> None:
        self.sandboxes.add(sb.id, sb)  # before the save: a compaction it starts must keep the new sandbox
        self.by_sandbox[sb.id] = {}
        self.save_sandbox(sb)
        self.end_setup(sb)  # after the save: a crash between the two leaves the sandbox, whole

    def drop_sandbox(self, sb: Sandbox) -> None:
        self.journal.delete("sandbox", sb.id)
        self.sandboxes.delete(sb.id)
        self.sandbox_list.drop(sb.id)
        self.by_sandbox.pop(sb.id, None)
        self.network_locks.pop(sb.id, None)
        self.names.release(sb.name)

    def add_container(self, c: Container) -> None:
        self.containers.add(c.id, c)  # before the save: a compaction it starts must keep the new container
        self.by_sandbox.setdefault(c.sandbox_id, {})[c.id] = c
        self.save_container(c)

    def drop_container(self, c: Container) -> None:
        self.journal.delete("container", c.id)
        self.containers.delete(c.id)
        self.container_list.drop(c.id)
        self.filesystems.pop(c.id, None)
        self._exec_pids.pop(c.id, None)
        self.listeners.close(c.id)
        rootfs.remove_layer(self.state_dir, c.id)
        self.by_sandbox.get(c.sandbox_id, {}).pop(c.id, None)
        self.names.release(c.name)

    def containers_of(self, sandbox_id: str) -> list[Container]:
        return list(self.by_sandbox.get(sandbox_id, {}).values())

    # -- processes --------------------------------------------------------------------------------

    def behaviour_of(self, c: Container) -> Behaviour:
        image = self.images.resolve(c.image_id)
        entrypoint = image.entrypoint if image else []
        cmd = image.cmd if image else []
        argv = command_line(c.config.command, c.config.args, entrypoint, cmd)
        return behaviour_for(argv, image.kind if image else "")

    def writable_bytes(self, c: Container) -> int:
        """Bytes in the container's writable layer: written at start, kept until the container is removed."""
        if not c.started_ns:
            return 0
        if self.scripted(c):
            return self.filesystem(c).upper_bytes()
        process = self.processes.get(c.id)
        return process.writable_bytes() if process is not None else int(self.behaviour_of(c).disk_mib * 1024 * 1024)

    def argv_of(self, c: Container) -> list[str]:
        image = self.images.resolve(c.image_id)
        return command_line(c.config.command, c.config.args, image.entrypoint if image else [],
                            image.cmd if image else [])

    def scripted(self, c: Container) -> bool:
        """Whether the shell interpreter runs this container: a busybox-like image, not the helper or pause."""
        image = self.images.resolve(c.image_id)
        if not rootfs.has_shell(image) or self.behaviour_of(c).kind == "pause":
            return False
        argv = self.argv_of(c)
        return not argv or argv[0].rsplit("/", 1)[-1] != HELPER

    def unstartable(self, c: Container) -> str | None:
        """The program a scripted container names that its filesystem lacks (runc would fail to exec it)."""
        if not self.scripted(c):
            return None
        argv = self.argv_of(c)
        if not argv:
            return ""
        program = argv[0]
        if "/" in program:
            return None if self.filesystem(c).exists(program) else program
        return None if program in APPLET_NAMES else program

    def filesystem(self, c: Container) -> Vfs:
        """The container's filesystem, shared by its main process and its execs."""
        fs = self.filesystems.get(c.id)
        if fs is None:
            sb = self.sandboxes.get(c.sandbox_id)
            fs = self.filesystems[c.id] = rootfs.filesystem(self.state_dir, c, sb, self.clock.now_ns)
        return fs

    def machine(self, c: Container, pid: int, stdout: Callable[[bytes], None],
                stderr: Callable[[bytes], None]) -> Machine:
        """What a command run in ``c`` (its main process or an exec) sees."""
        def missing(what: str) -> None:
            log.warning("container %s (%s): the shell subset lacks %s", c.id[:12], c.config.metadata.name, what)

        sb = self.sandboxes.get(c.sandbox_id)
        image = self.images.resolve(c.image_id)
        m = rootfs.machine(c, sb, image, self.filesystem(c), pid, self.clock.now_ns, stdout, stderr, missing)
        m.others = lambda: self.visible_processes(c, pid)
        return m

    def visible_processes(self, c: Container, pid: int) -> list[tuple[int, str]]:
        """The processes a command with ``pid`` in ``c`` sees besides its own, as (pid, command line): in the
        pod's shared PID namespace the pause process as PID 1 and the main processes of the pod's other
        containers that share it; in the container's own, its main process (for an exec)."""
        def main_of(other: Container) -> tuple[int, str] | None:
            machine = getattr(self.processes.get(other.id), "machine", None)
            if machine is None or machine.pid == pid:
                return None
            return machine.pid, machine.cmdline or "sh"

        mode = c.config.linux.security_context.namespace_options.pid
        if mode == cri.CONTAINER:
            own = main_of(c)
            return [own] if own is not None else []
        if mode != cri.POD:
            return []
        seen = [(1, "/pause")]
        for other in self.containers_of(c.sandbox_id):
            if other.config.linux.security_context.namespace_options.pid == cri.POD:
                found = main_of(other)
                if found is not None:
                    seen.append(found)
        return seen

    def next_exec_pid(self, c: Container) -> int:
        self._exec_pids[c.id] = pid = self._exec_pids.get(c.id, 100) + 1
        return pid

    def container_log(self, c: Container) -> ContainerLog:
        """The container's log file, kept below its sandbox's log directory."""
        sb = self.sandboxes.find(c.sandbox_id)
        return ContainerLog(c.log_path, sb.config.log_directory if sb is not None else "")

    def start_process(self, c: Container, resumed: bool = False) -> Process:
        """Run a started container's simulated process (``resumed``: again, after an emulator restart)."""
        process: Process
        if self.scripted(c):
            siblings = sum(1 for other in self.containers_of(c.sandbox_id) if other.started_ns and other.id != c.id)
            pid = rootfs.main_pid(c, siblings)
            process = ScriptedProcess(
                c,
                Behaviour(kind="script", ignore_sigterm=True),  # signals go to the program itself
                self.clock,
                self.container_log(c),
                on_exit=self._process_exited,
                on_progress=self.save_container,
                argv=self.argv_of(c),
                machine=lambda out, err: self.machine(c, pid, out, err),
                min_tick_ns=self._min_tick_ns,
            )
        else:
            process = Process(
                c,
                self.behaviour_of(c),
                self.clock,
                self.container_log(c),
                on_exit=self._process_exited,
                on_progress=self.save_container,
                min_tick_ns=self._min_tick_ns,
            )
        self.processes[c.id] = process
        process.start()
        self._listen(c, process, resumed)
        return process

    def _listen(self, c: Container, process: Process, resumed: bool) -> None:
        """Open the container's HTTP/TCP/gRPC ports on its pod IP (see ``listeners``)."""
        b = process.behaviour
        if process.done or (b.http_port is None and b.tcp_port is None and b.grpc_port is None):
            return
        sb = self.sandboxes.find(c.sandbox_id)
        if sb is None or not sb.ready:
            return

        def healthy() -> bool:
            return b.unhealthy_after_ns is None or self.clock.now_ns() - c.started_ns < b.unhealthy_after_ns

        failures = self.listeners.open(c.id, sb.ip, b.http_port, b.tcp_port, healthy, b.grpc_port, b.grpc_service)
        if failures and not resumed:  # khelper reports a port it cannot get on stderr and carries on
            log_file = self.container_log(c)
            log_file.write(b"".join(encode_line(c.started_ns, "stderr", line.encode()) for line in failures))
            log_file.close()
        for line in failures:
            log.info("container %s (%s): %s", c.id[:12], c.config.metadata.name, line)

    def _process_exited(self, c: Container, ending: Exit) -> None:
        process = self.processes.pop(c.id, None)
        self.listeners.close(c.id)
        if process is not None and ending.clean and process.behaviour.termination_message is not None:
            self._write_termination_message(c, process.behaviour, ending.at_ns)
        self.mark_exited(c, ending)

    def _write_termination_message(self, c: Container, b: Behaviour, at_ns: int) -> None:
        """What ``--termination-message`` makes the process write as it ends, into its own filesystem: through
        a mount at that path (the kubelet's termination message file) or into its writable layer. A path it
        cannot write is reported on stderr, as khelper reports it."""
        assert b.termination_message is not None
        try:
            self.filesystem(c).write(b.termination_message_path, b.termination_message.encode())
        except VfsError as err:
            line = f"{HELPER}: cannot write {b.termination_message_path}: {err.message}"
            log_file = self.container_log(c)
            log_file.write(encode_line(at_ns, "stderr", line.encode()))
            log_file.close()

    def mark_exited(self, c: Container, ending: Exit) -> None:
        """Record an exit, tell the event stream and wake whoever waits for it."""
        c.finished_ns = ending.at_ns
        c.exit_code = ending.code
        c.reason = ending.reason
        c.message = ending.message
        c.term_ns = c.kill_ns = 0
        self.save_container(c)
        self.emit(cri.CONTAINER_STOPPED_EVENT, c)
        for waiter in self._exit_waiters.pop(c.id, []):
            if not waiter.done():
                waiter.set_result(None)

    def wait_exited(self, c: Container) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if c.finished_ns:
            future.set_result(None)
        else:
            self._exit_waiters.setdefault(c.id, []).append(future)
        return future

    def stop_waiting(self, c: Container, future: asyncio.Future[None]) -> None:
        """Forget a :meth:`wait_exited` future that is no longer wanted."""
        future.cancel()
        waiters = self._exit_waiters.get(c.id)
        if waiters is not None and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self._exit_waiters[c.id]

    # -- events -----------------------------------------------------------------------------------

    def emit(self, kind: cri.ContainerEventType, c: Container) -> None:
        """A container event, with the status of its sandbox and of the sandbox's containers."""
        if self.events.subscribers:
            self._publish(kind, c.id, self.sandboxes.find(c.sandbox_id))

    def emit_sandbox(self, kind: cri.ContainerEventType, sb: Sandbox) -> None:
        """A sandbox event: containerd (1.7+) reports sandboxes as containers whose id is the sandbox id."""
        if self.events.subscribers:
            self._publish(kind, sb.id, sb)

    def _publish(self, kind: cri.ContainerEventType, object_id: str, sb: Sandbox | None) -> None:
        event = cri.ContainerEventResponse(
            container_id=object_id, container_event_type=kind, created_at=self.clock.now_ns()
        )
        if sb is not None:
            event.pod_sandbox_status.CopyFrom(sandbox_status(sb))
            for other in self.containers_of(sb.id):
                event.containers_statuses.append(container_status(other, self.images.resolve(other.image_id)))
        self.events.publish(event)

    # -- start and stop ---------------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild the state saved in ``state_dir``; running containers resume, judged by the clock."""
        saved, self._saved = self._saved, {}
        for record in saved.get("sandbox", {}).values():
            sb = Sandbox.from_record(record)
            self.sandboxes.add(sb.id, sb)
            self.sandbox_list.update(sb.id, sb)
            self.by_sandbox.setdefault(sb.id, {})
            self.names.reserve(sb.name, sb.id)
            if sb.ready and sb.ip:
                self.ips.reserve(sb.ip)
        for record in saved.get("container", {}).values():
            c = Container.from_record(record)
            if self.sandboxes.find(c.sandbox_id) is None:
                log.warning("dropping container %s of vanished sandbox %s", c.id, c.sandbox_id)
                self.journal.delete("container", c.id)
                continue
            self.containers.add(c.id, c)
            self.container_list.update(c.id, c)
            self.by_sandbox[c.sandbox_id][c.id] = c
            self.names.reserve(c.name, c.id)
        for record in saved.get(self.SETUP_KIND, {}).values():
            if self.sandboxes.find(record["id"]) is None:
                self.setups[record["id"]] = record  # a RunPodSandbox cut by a crash: recover_setups undoes it
            else:
                self.journal.delete(self.SETUP_KIND, record["id"])
        resumed = 0
        for c in self.containers:
            if c.state == cri.CONTAINER_RUNNING:
                self.start_process(c, resumed=True)
                resumed += 1
        log.info(
            "loaded %d sandboxes, %d containers (%d running), %d images",
            len(self.sandboxes), len(self.containers), resumed, len(self.images),
        )

    async def recover_setups(self) -> None:
        """Undo the network setups that a crash cut (their RunPodSandbox was never answered): CNI DEL and
        the namespace, so no address or namespace leaks. A failed DEL is retried at the next start."""
        from kubeharness.emulators.cri import sandbox_network  # it imports this module

        for record in list(self.setups.values()):
            sb = Sandbox.from_record(record)
            if await sandbox_network.undo_setup(self, sb):
                self.end_setup(sb)

    def shutdown(self) -> None:
        """Save progress and drop timers; the processes resume on the next load."""
        self.listeners.close_all()
        for process in list(self.processes.values()):
            process.stop_timers()
            self.save_container(process.container)
        self.processes.clear()
        self.journal.close()
